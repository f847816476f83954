"""Onboarding a newcomer: which items to ask them to rate, round by round.

Serving (:mod:`metarec.serve`) and evaluation (:mod:`metarec.eval`) both use it, so it sits below both:
:mod:`~metarec.onboarding.questionnaire` (the adaptive questionnaire the service runs),
:mod:`~metarec.onboarding.strategies` (every strategy, and the next round for one newcomer),
:mod:`~metarec.onboarding.catalogue` (what meta-training tells them) and
:mod:`~metarec.onboarding.greedy` (the two greedy strategies).
"""

from metarec.onboarding.questionnaire import AdaptiveQuestionnaire, QuestionnaireConfig
from metarec.onboarding.strategies import STRATEGIES, next_round, strategy_order

__all__ = ["AdaptiveQuestionnaire", "QuestionnaireConfig", "STRATEGIES", "next_round", "strategy_order"]
