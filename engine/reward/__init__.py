"""Rule-based math reward: answer extraction, safe equivalence checking and batch grading.

Importing this package loads no sympy and no torch; sympy is imported by the symbolic stage
(inside the verification workers, or in-process when ``workers=0``).
"""

from .config import GradeResult, RewardConfig, compute_reward
from .equivalence import is_equivalent, quick_verdict
from .extract import extract_answer
from .grader import Grader, grade

__all__ = [
    "extract_answer", "is_equivalent", "quick_verdict", "grade", "RewardConfig", "Grader",
    "GradeResult", "compute_reward",
]
