"""Training objectives, one per file, each documenting what it optimises, its inputs and its paper.

Retrieval losses share one layout: `queries` (batch, dim) and `documents` (batch * (1 + negatives),
dim), where row i of the first `batch` document rows is query i's positive and the rest are hard
negatives (query-major). Every other document in the batch is an in-batch negative.
"""

from training.losses.cosent import CoSENTLoss
from training.losses.cwcl import CWCLLoss
from training.losses.dcl import DecoupledContrastiveLoss
from training.losses.infonce import InfoNCELoss
from training.losses.listwise import ListwiseSoftmaxLoss
from training.losses.listwise_distillation import ListwiseDistillationLoss
from training.losses.margin_mse import MarginMSELoss
from training.losses.matryoshka import MatryoshkaLoss
from training.losses.mw import MannWhitneyLoss
from training.losses.siglip import SigLIPLoss
from training.losses.wasserstein import WassersteinListwiseLoss

__all__ = [
    "CWCLLoss",
    "CoSENTLoss",
    "DecoupledContrastiveLoss",
    "InfoNCELoss",
    "ListwiseDistillationLoss",
    "ListwiseSoftmaxLoss",
    "MannWhitneyLoss",
    "MarginMSELoss",
    "MatryoshkaLoss",
    "SigLIPLoss",
    "WassersteinListwiseLoss",
]
