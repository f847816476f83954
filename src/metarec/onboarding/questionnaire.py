"""The adaptive onboarding questionnaire: which items to show a newcomer next, given what they knew so far.

Why adaptive: no *fixed* list beats the most popular items offline (docs/onboarding.md). An answer moves
a newcomer's model more than the choice of item does, and popular items get the most answers. But
popularity is an average over users, and a newcomer who knew none of the first five blockbusters is not
average. So the questionnaire keeps a *panel*: training users with as many ratings as newcomers have.
After each round it reweights the panel by how well each member agrees with this newcomer on the items
shown so far. Every disagreement (the newcomer rated an item the member never rated, or skipped one
the member rated) multiplies the member's weight by ``mismatch``. The next items are those the
reweighted panel knows best, i.e. an estimate of P(the newcomer can rate item j | the answers so far).
Rating values are not used: whether the user knows an item is what decides the next answer.

With nothing shown yet, every member weighs the same and the first round is popularity within the panel.
The same scoring serves one request (:meth:`AdaptiveQuestionnaire.next_items`) and simulates every
held-out user of the offline experiment at once (:meth:`AdaptiveQuestionnaire.positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

NEVER = np.iinfo(np.int64).max


def who_rated(user: np.ndarray, item: np.ndarray, n_items: int) -> sp.csr_matrix:
    """[distinct users, in sorted order] x ``n_items``: 1 where the user rated the item (a repeat counts once)."""
    _, member = np.unique(np.asarray(user), return_inverse=True)
    n_users = int(member.max()) + 1 if len(member) else 0
    rated = sp.csr_matrix((np.ones(len(member)), (member, np.asarray(item, np.int64))), shape=(n_users, n_items))
    rated.sum_duplicates()
    rated.data[:] = 1.0
    return rated


@dataclass(frozen=True)
class QuestionnaireConfig:
    """``mismatch``: weight factor per disagreement, in (0, 1]; 1 never adapts (panel popularity).
    ``round_size``: items shown per round in the offline simulation. ``adaptive_items``: once this many
    items have been shown, the rest come in the panel's popularity order, in serving as in the
    simulation. Deep in the catalogue, a newcomer's long list of disagreements leaves all the weight on a
    handful of panel members. ``mismatch`` and ``round_size`` were chosen on ML-1M validation users
    (docs/onboarding.md); ``adaptive_items`` was set, not tuned."""

    mismatch: float = 0.3
    round_size: int = 10
    adaptive_items: int = 100
    max_panel_users: int = 10_000  # a bigger panel is subsampled (seeded), so a round stays a few ms

    def __post_init__(self) -> None:
        if not 0.0 < self.mismatch <= 1.0:
            raise ValueError(f"mismatch must be in (0, 1], got {self.mismatch}")
        if self.round_size < 1 or self.adaptive_items < 0:
            raise ValueError("round_size must be >= 1 and adaptive_items >= 0")
        if self.max_panel_users < 1:
            raise ValueError("max_panel_users must be >= 1")


class AdaptiveQuestionnaire:
    """Panel-reweighted answer probabilities over an askable catalogue (see the module docstring).

    ``panel_user`` / ``panel_item``: who in the panel rated which item index (duplicates are fine);
    ``askable``: item indices that may be shown (e.g. the items meta-training saw); ``popularity``:
    per item index, the tie-break (ratings in training), then the lower index.
    """

    def __init__(self, panel_user: np.ndarray, panel_item: np.ndarray, n_items: int, askable: np.ndarray,
                 popularity: np.ndarray, config: QuestionnaireConfig | None = None) -> None:
        self.config = config or QuestionnaireConfig()
        panel_user, panel_item = np.asarray(panel_user), np.asarray(panel_item, dtype=np.int64)
        if panel_user.shape != panel_item.shape:
            raise ValueError("panel_user and panel_item must have the same length")
        if len(panel_item) and (panel_item.min() < 0 or panel_item.max() >= n_items):
            raise ValueError(f"panel item indices must lie in [0, {n_items})")
        popularity = np.asarray(popularity, dtype=np.float64)
        if popularity.shape != (n_items,):
            raise ValueError(f"popularity has shape {popularity.shape}, expected ({n_items},)")
        knows = who_rated(panel_user, panel_item, n_items)
        if knows.shape[0] > self.config.max_panel_users:  # the same members every time: seeded, on sorted ids
            keep = np.zeros(knows.shape[0], bool)
            keep[np.random.default_rng(0).choice(knows.shape[0], self.config.max_panel_users, replace=False)] = True
            knows = knows[np.flatnonzero(keep)]
        self.knows = knows  # [members, items], 1 = rated
        self.knows_t = knows.T.tocsr()
        self.n_items = int(n_items)
        self.askable = np.zeros(n_items, bool)
        self.askable[np.asarray(askable, dtype=np.int64)] = True
        self.popularity = popularity
        # static order among askable items: panel popularity, then training popularity, then index
        self._static = self._rank(np.asarray(knows.sum(0)).ravel(), np.zeros(n_items, bool))

    @classmethod
    def from_panel(cls, panel_user: np.ndarray | None, panel_item: np.ndarray | None, popularity: np.ndarray,
                   config: QuestionnaireConfig | None = None) -> "AdaptiveQuestionnaire":
        """The questionnaire of a panel and the training popularity per item index: the askable items are
        those training saw. No panel (None): it never adapts and asks any item, most popular first."""
        popularity = np.asarray(popularity)
        n_items = len(popularity)
        if panel_user is None or panel_item is None:
            no_one = np.zeros(0, np.int64)
            return cls(no_one, no_one, n_items, np.arange(n_items), popularity, config)
        return cls(panel_user, panel_item, n_items, np.flatnonzero(popularity > 0), popularity, config)

    @property
    def n_members(self) -> int:
        return int(self.knows.shape[0])

    # ------------------------------------------------------------------ scoring
    def answer_probability(self, shown: np.ndarray, answered: np.ndarray) -> np.ndarray:
        """[T, n_items] P(the newcomer rates item j) from [T, n_items] boolean ``shown`` / ``answered``
        (answered implies shown): the panel's rate of knowing j, each member weighted by
        ``mismatch`` ** (disagreements on the shown items)."""
        shown = np.atleast_2d(shown).astype(np.float64)
        answered = np.atleast_2d(answered).astype(np.float64) * shown
        if self.n_members == 0:
            return np.zeros_like(shown)
        # disagreements = |answered| - answered.knows + (shown - answered).knows = |answered| + (shown - 2 answered).knows
        disagree = answered.sum(1)[None, :] + np.asarray(self.knows @ (shown - 2.0 * answered).T)  # [members, T]
        log_w = np.log(self.config.mismatch) * disagree
        w = np.exp(log_w - log_w.max(0, keepdims=True))
        return (np.asarray(self.knows_t @ w) / w.sum(0, keepdims=True)).T

    def _rank(self, score: np.ndarray, excluded: np.ndarray) -> np.ndarray:
        """Askable, not excluded item indices by score, then training popularity, then index."""
        candidates = np.flatnonzero(self.askable & ~excluded)
        return candidates[np.lexsort((candidates, -self.popularity[candidates], -score[candidates]))]

    def next_items(self, shown: np.ndarray, answered: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` item indices to show one newcomer who was shown ``shown`` and rated ``answered``
        (item index arrays; a rated item counts as shown)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        shown_mask = np.zeros(self.n_items, bool)
        answered_mask = np.zeros(self.n_items, bool)
        answered_mask[np.asarray(answered, dtype=np.int64)] = True
        shown_mask[np.asarray(shown, dtype=np.int64)] = True
        shown_mask |= answered_mask
        if shown_mask.sum() >= self.config.adaptive_items:  # past the adaptive part: panel popularity
            return self._static[~shown_mask[self._static]][:n]
        score = self.answer_probability(shown_mask[None], answered_mask[None])[0]
        return self._rank(score, shown_mask)[:n]

    # ------------------------------------------------------------------ simulation
    def positions(self, pools: np.ndarray) -> np.ndarray:
        """[T, n_items] position of each item in each newcomer's questionnaire (``NEVER``: not askable),
        for the offline experiment's simulation. ``pools`` [T, n_items] boolean: what each newcomer
        can rate. Rounds of ``round_size`` items are chosen from the answers so far, exactly as
        :meth:`next_items` would choose them, up to ``adaptive_items``; the rest follow the panel's
        popularity."""
        pools = np.asarray(pools, dtype=bool)
        T = pools.shape[0]
        cfg = self.config
        position = np.full((T, self.n_items), NEVER, np.int64)
        shown = np.zeros((T, self.n_items), bool)
        limit = min(cfg.adaptive_items, int(self.askable.sum()))
        done = 0
        while done < limit:
            size = min(cfg.round_size, limit - done)
            score = self.answer_probability(shown, shown & pools)
            for t in range(T):
                pick = self._rank(score[t], shown[t])[:size]
                position[t, pick] = done + np.arange(len(pick))
                shown[t, pick] = True
            done += size
        for t in range(T):
            rest = self._static[~shown[t, self._static]]
            position[t, rest] = done + np.arange(len(rest))
        return position
