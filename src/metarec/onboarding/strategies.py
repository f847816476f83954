"""Onboarding strategies: which items to ask a new user to rate first, and in what order.

A strategy orders the *trained catalogue* (items meta-training saw) into a questionnaire:

* ``random`` - a fresh random permutation of the catalogue per user (a questionnaire with no criterion);
* ``popular`` - most rated first: the items a newcomer most likely knows;
* ``pop-entropy`` - log(1 + popularity) x standard deviation of the item's ratings: popular *and*
  divisive (Rashid et al.'s Pop*Ent);
* ``melu-evidence`` - MeLU's evidence candidates: normalised popularity x normalised mean norm of the
  gradient one rating of the item causes in the adapted parameters at the meta-learned initialisation;
* ``greedy-info`` - popular *and* informative *and* not redundant: items are picked one at a time by
  P(the user knows it) x the information its rating would give about the user's taste vector (a
  Bayesian linear model on matrix-factorisation item factors, [1, q_i]), the posterior covariance
  updated after each pick by the expected answer; two items that say the same thing are not both asked;
* ``greedy-error`` - GreedyExtend (Golbandi et al., 2010): items picked one at a time by how much they cut
  the query error of simulated newcomers (meta-train users a matrix factorisation was not fitted on)
  after onboarding with the picks so far, their answers folded in by ridge regression;
* ``coverage`` - popularity among newcomer-like users, discounted per user: each user's next answer
  counts ``decay`` (0.75) times their previous one, so the questionnaire reaches users the earlier
  picks missed;
* ``adaptive`` - not one list but one per user: rounds of 10 items, each chosen from what the user knew
  in the earlier rounds, by a panel of newcomer-like training users reweighted by agreement with them
  (:mod:`metarec.onboarding.questionnaire`; what the service serves).

:func:`next_round` is what a product asks: the next items for one newcomer, given what they were shown
and rated. :mod:`metarec.eval.onboarding_experiment` measures what each strategy buys on held-out users.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.func import grad, vmap

from metarec.errors import UnknownIdError
from metarec.meta import MetaLearner
from metarec.meta.losses import masked_mse
from metarec.onboarding.catalogue import (item_indices, item_statistics, newcomer_like_ratings, trained_catalogue,
                                          training_counts)
from metarec.onboarding.greedy import greedy_error_order, greedy_information_order
from metarec.onboarding.questionnaire import AdaptiveQuestionnaire, QuestionnaireConfig, who_rated
from metarec.tasks import ColdStartSplit, TaskBatch

STRATEGIES = ("random", "popular", "pop-entropy", "melu-evidence", "greedy-info", "greedy-error", "coverage",
              "adaptive")


def check_strategies(names: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the first unknown strategy: a typo fails before any work is done."""
    for name in names:
        if name not in STRATEGIES:
            raise ValueError(f"unknown onboarding strategy {name!r}; known: {', '.join(STRATEGIES)}")


def gradient_evidence(learner: MetaLearner, split: ColdStartSplit, *, max_pairs: int = 20000, seed: int = 0) -> np.ndarray:
    """Mean norm, per item, of the inner-loop gradient one rating of it causes (MeLU's evidence)."""
    train = split.train_ratings()
    rng = np.random.default_rng(seed)
    if len(train) > max_pairs:
        train = train.iloc[np.sort(rng.choice(len(train), max_pairs, replace=False))]
    device = next(learner.model.parameters()).device
    user = torch.as_tensor(train["user_idx"].to_numpy(copy=True), dtype=torch.long, device=device)
    item = torch.as_tensor(train["item_idx"].to_numpy(copy=True), dtype=torch.long, device=device).unsqueeze(1)
    rating = torch.as_tensor(train["rating"].to_numpy(copy=True), dtype=torch.float32, device=device).unsqueeze(1)
    norms = np.zeros(len(train))
    params = {n: p.detach() for n, p in learner.model.named_parameters()}
    fast, frozen = learner.split_params(params)
    for start in range(0, len(train), 2048):
        sl = slice(start, start + 2048)
        ones = torch.ones_like(rating[sl])
        batch = TaskBatch(user[sl], item[sl], rating[sl], ones, item[sl], rating[sl], ones)
        with torch.no_grad():
            task = learner.task_inputs(batch, params)
        task = {k: v for k, v in task.items() if k not in ("item_vec", "support_inv", "query_inv")}

        def norm_one(f, t):
            g = grad(lambda p: masked_mse(learner.predict_task({**frozen, **p}, t, "support"), t["support_rating"], t["support_mask"]))(f)
            return torch.sqrt(sum((v ** 2).sum() for v in g.values()))

        norms[sl] = vmap(norm_one, in_dims=(None, 0), randomness="different")(fast, task).cpu().numpy()
    per_item = pd.Series(norms).groupby(train["item_idx"].to_numpy()).mean()
    return per_item.reindex(np.arange(split.dataset.n_items)).fillna(0.0).to_numpy()


def coverage_order(user: np.ndarray, item: np.ndarray, catalogue: np.ndarray, popularity: np.ndarray, *,
                   decay: float = 0.75, first: int = 100) -> np.ndarray:
    """The ``coverage`` questionnaire: items picked one at a time by how many answers they would get
    from the users in (``user``, ``item``) - the pairs of who rated what -, each user's next answer
    worth ``decay`` times their previous one. ``decay`` = 1 is plain popularity; below 1 an item known
    to users who have no answer yet beats one known to the same users as earlier picks, because a
    first answer moves a newcomer's model most. After ``first`` picks, the rest by ``popularity``."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    n_items = max(int(item.max(initial=0)), int(catalogue.max(initial=0))) + 1
    rated = who_rated(user, item, n_items).tocsc()
    available = np.zeros(n_items, bool)
    available[catalogue] = True
    answers = np.zeros(rated.shape[0])
    chosen: list[int] = []
    for _ in range(min(first, len(catalogue))):
        gain = np.asarray(rated.T @ decay ** answers).ravel()
        gain[~available] = -1.0
        best = int(np.argmax(gain))  # ties: the lower item index
        chosen.append(best)
        available[best] = False
        answers[rated.indices[rated.indptr[best]:rated.indptr[best + 1]]] += 1.0
    chosen_arr = np.asarray(chosen, np.int64)
    rest = catalogue[~np.isin(catalogue, chosen_arr)]
    return np.r_[chosen_arr, rest[np.lexsort((rest, -popularity[rest]))]]


def adaptive_questionnaire(split: ColdStartSplit, config: QuestionnaireConfig | None = None) -> AdaptiveQuestionnaire:
    """The ``adaptive`` strategy of a split: its panel is the newcomer-like meta-train users
    (:func:`newcomer_like_ratings`), its askable items the trained catalogue."""
    frame = newcomer_like_ratings(split)
    return AdaptiveQuestionnaire.from_panel(frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy(),
                                            training_counts(split), config)


def strategy_order(strategy: str, split: ColdStartSplit, learner: MetaLearner | None = None) -> np.ndarray:
    """The questionnaire of a fixed strategy: trained catalogue item indices, first asked first
    (ties: lower item index first). ``random`` has no fixed order (it is drawn per user);
    ``adaptive``'s is its first round's order, before any answer."""
    catalogue = trained_catalogue(split)
    if strategy == "adaptive":
        questionnaire = adaptive_questionnaire(split)
        return questionnaire.next_items(np.zeros(0, np.int64), np.zeros(0, np.int64), len(catalogue))
    if strategy == "greedy-info":
        return greedy_information_order(split)
    if strategy == "greedy-error":
        return greedy_error_order(split)
    if strategy == "coverage":
        frame = newcomer_like_ratings(split)
        count = item_statistics(split)["count"].to_numpy(np.float64)
        return coverage_order(frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy(), catalogue, count)
    stats = item_statistics(split)
    count = stats["count"].to_numpy(dtype=np.float64)
    if strategy == "popular":
        score = count
    elif strategy == "pop-entropy":
        score = np.log1p(count) * stats["std"].fillna(0.0).to_numpy()
    elif strategy == "melu-evidence":
        if learner is None:
            raise ValueError("melu-evidence needs the meta-learner")
        evidence = gradient_evidence(learner, split)
        score = (count / max(count.max(), 1.0)) * (evidence / max(evidence.max(), 1e-12))
    else:
        check_strategies([strategy])
        raise ValueError("a random questionnaire has no fixed order: it is drawn per user")
    return catalogue[np.lexsort((catalogue, -score[catalogue]))]


def next_round(strategy: str, split: ColdStartSplit, learner: MetaLearner | None, n: int,
               shown: Sequence[str] = (), rated: Sequence[str] = ()) -> list[str]:
    """The next ``n`` item ids to ask one newcomer who was shown ``shown`` and rated ``rated`` (ids;
    nothing shown: the first round). ``adaptive`` reweights its panel by the answers so far; a fixed
    strategy gives its next items not shown yet. Unknown ids raise :class:`UnknownIdError`: here the
    catalogue is the split's own, so an unknown id is a typo, not a client running ahead of the model."""
    check_strategies([strategy])
    vocab = split.dataset.item_vocab
    asked = {}
    for name, ids in (("shown", shown), ("rated", rated)):
        asked[name], unknown = item_indices(vocab, ids)
        if unknown:
            raise UnknownIdError(f"{name}: unknown item id(s) {unknown[:5]}")
    if strategy == "adaptive":
        picks = adaptive_questionnaire(split).next_items(asked["shown"], asked["rated"], n)
    else:
        order = strategy_order(strategy, split, learner)
        picks = order[~np.isin(order, np.r_[asked["shown"], asked["rated"]])][:n]
    return [vocab.ids[int(i)] for i in picks]
