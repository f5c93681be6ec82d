"""CLaaS's own ks, mmd and lsdd detectors: the same tests as alibi-detect 0.13's KSDrift, MMDDrift and
LSDDDrift (pytorch backend, CPU), without importing alibi-detect.

They are used when alibi-detect is not installed (clserver/drift/detectors.py decides). Fitting follows
alibi's steps in alibi's order (preprocessing, the median-heuristic kernel bandwidth, LSDD's normalisation
and kernel centres drawn by torch.randperm), and scoring is clserver/drift/fast.py's, which alibi's
detectors also use: under the same seeds the statistics are alibi's, and so are the permutations.
tests/clserver/drift/test_drift_own.py holds them to alibi's answers on the same data.

A fitted detector saves to a folder of its own (`claas-detector.json`, tensors loadable with
torch's weights_only, and the preprocess encoder when there is one) that `load` reads back.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from claas_site.lazy import lazy_import
from clserver.drift import fast

torch = lazy_import("torch")

MARKER = "claas-detector.json"
LSDD_EPS = 1e-12
LSDD_LAMBDA_RD_MAX = 0.2


# --- shared pieces -----------------------------------------------------------------------------
def preprocess_batches(x: Any, *, model: Any, device: Any, batch_size: int) -> np.ndarray:
    """The encoder's outputs for `x`, `batch_size` rows at a time, as a numpy array (alibi's
    `preprocess_drift` for a model returning one tensor)."""
    x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = model(x[start:start + batch_size].to(device))
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"The preprocess returned {type(out).__name__}, not a tensor.")
            outputs.append(out.cpu().numpy())
    return np.concatenate(outputs, axis=0)


def squared_distances(x: Any, y: Any, a_min: float = 1e-30) -> Any:
    """Squared Euclidean distances between the rows of x and y, clamped below at a_min."""
    x2 = x.pow(2).sum(dim=-1, keepdim=True)
    y2 = y.pow(2).sum(dim=-1, keepdim=True)
    dist = torch.addmm(y2.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x2)
    return dist.clamp_min_(a_min)


class GaussianKernel:
    """exp(-|x - y|^2 / (2 sigma^2)); sigma, unless given, is set on first use by the median heuristic
    (half the median of the squared distances, leaving out the zero diagonal of k(x, x)). Sigma is
    kept as its logarithm, as alibi's GaussianRBF keeps it, so both round it alike."""

    def __init__(self, sigma: Any = None) -> None:
        self.log_sigma = None if sigma is None else sigma.reshape(-1).log()

    @property
    def sigma(self) -> Any:
        return self.log_sigma.exp()

    def __call__(self, x: Any, y: Any, infer_sigma: bool = False) -> Any:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        dist = squared_distances(x.flatten(1), y.flatten(1))
        if infer_sigma or self.log_sigma is None:
            n = min(x.shape[0], y.shape[0])
            n = n if (x[:n] == y[:n]).all() and x.shape == y.shape else 0
            n_median = n + (int(np.prod(dist.shape)) - n) // 2 - 1
            sigma = (.5 * dist.flatten().sort().values[int(n_median)].unsqueeze(dim=-1)) ** .5
            self.log_sigma = sigma.log().clone()
        gamma = 1. / (2. * self.sigma ** 2)
        return torch.exp(-(gamma * dist)[None, :, :]).mean(dim=0)


class OwnDetector:
    """Fitting and scoring common to the three: the reference (preprocessed at fitting, as alibi does by
    default), the significance level, `predict` answering as alibi's `predict` does."""

    name = ""
    config_keys: tuple[str, ...] = ("p_val",)
    tensor_keys: tuple[str, ...] = ()

    def __init__(self, x_ref: np.ndarray, *, p_val: float, preprocess_fn: Callable | None = None) -> None:
        self.p_val = p_val
        self.preprocess_fn = preprocess_fn
        self.x_ref = preprocess_fn(x_ref) if preprocess_fn is not None else x_ref
        self.n = len(x_ref)
        self.device = torch.device("cpu")

    def preprocess(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x_ref, (self.preprocess_fn(x) if self.preprocess_fn is not None else x)

    def predict(self, x: np.ndarray, return_p_val: bool = True, return_distance: bool = True) -> dict[str, Any]:
        p_val, distance, distance_threshold = self.score(x)
        data: dict[str, Any] = {"is_drift": int(p_val < self.p_val)}
        if return_p_val:
            data.update(p_val=p_val, threshold=self.p_val)
        if return_distance:
            data.update(distance=distance, distance_threshold=distance_threshold)
        return {"meta": {"name": type(self).__name__, "implementation": "claas"}, "data": data}

    def score(self, x: np.ndarray) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    # --- saving ---
    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        encoder = self.preprocess_fn.keywords["model"] if self.preprocess_fn is not None else None
        config = {"name": self.name, **{k: getattr(self, k) for k in self.config_keys},
                  "n": self.n, "preprocess_batch_size": (self.preprocess_fn.keywords["batch_size"]
                                                         if encoder is not None else None)}
        tensors = {k: torch.as_tensor(getattr(self, k)) for k in ("x_ref", *self.tensor_keys)}
        torch.save(tensors, path / "tensors.pt")
        if encoder is not None:
            torch.save(encoder, path / "preprocess.pt", pickle_module=_pickler())
        (path / MARKER).write_text(json.dumps(config, indent=1))

    @classmethod
    def restore(cls, path: Path, config: dict[str, Any]) -> OwnDetector:
        self = cls.__new__(cls)
        self.device = torch.device("cpu")
        for key in cls.config_keys:
            setattr(self, key, config[key])
        self.n = config["n"]
        self.preprocess_fn = None
        if config["preprocess_batch_size"] is not None:
            encoder = torch.load(path / "preprocess.pt", pickle_module=_pickler(), weights_only=False)
            self.preprocess_fn = partial(preprocess_batches, model=encoder.eval(), device=self.device,
                                         batch_size=config["preprocess_batch_size"])
        tensors = torch.load(path / "tensors.pt", weights_only=True)
        self.x_ref = tensors.pop("x_ref").numpy()
        for key, value in tensors.items():
            setattr(self, key, value)
        self.restored()
        return self

    def restored(self) -> None:
        """Rebuild what is derived from the saved tensors."""


def _pickler() -> Any:
    """dill where installed (it pickles more kinds of modules than pickle), as alibi saves encoders."""
    try:
        import dill

        return dill
    except ImportError:  # pragma: no cover - avalanche depends on dill
        import pickle

        return pickle


# --- the detectors -----------------------------------------------------------------------------
class KS(OwnDetector):
    """Kolmogorov-Smirnov per feature (scipy's asymptotic p-values), Bonferroni or FDR over the features."""

    name = "ks"
    config_keys = ("p_val", "correction", "alternative", "n_features")

    def __init__(self, x_ref: np.ndarray, *, p_val: float, correction: str, preprocess_fn: Callable | None = None,
                 alternative: str = "two-sided") -> None:
        super().__init__(x_ref, p_val=p_val, preprocess_fn=preprocess_fn)
        self.correction, self.alternative = correction, alternative
        self.n_features = int(self.x_ref.reshape(self.x_ref.shape[0], -1).shape[-1])
        if correction not in ("bonferroni", "fdr") and self.n_features > 1:
            raise ValueError("Only `bonferroni` and `fdr` are acceptable for multivariate correction.")

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        x_ref, x = self.preprocess(x)
        p_vals, dist = fast.ks_feature_score(self, x_ref, x)
        return p_vals, dist, None

    def predict(self, x: np.ndarray, return_p_val: bool = True, return_distance: bool = True) -> dict[str, Any]:
        p_vals, dist, _ = self.score(x)
        if self.correction == "bonferroni":
            threshold = self.p_val / self.n_features
            is_drift = int((p_vals < threshold).any())
        else:
            is_drift, threshold = fdr(p_vals, q_val=self.p_val)
        data: dict[str, Any] = {"is_drift": is_drift}
        if return_p_val:
            data.update(p_val=p_vals, threshold=threshold)
        if return_distance:
            data["distance"] = dist
        return {"meta": {"name": "KS", "implementation": "claas"}, "data": data}


def fdr(p_vals: np.ndarray, q_val: float) -> tuple[int, Any]:
    """Benjamini-Hochberg: drift when some sorted p-value p_(i) < q i / n; the threshold is the largest
    q i / n met, or all of them when none is (as alibi-detect reports it)."""
    n = p_vals.shape[0]
    q_threshold = q_val * (np.arange(n) + 1) / n
    below = np.sort(p_vals) < q_threshold
    if not below.any():
        return 0, q_threshold
    return 1, q_threshold[np.where(below)[0].max()]


class MMD(OwnDetector):
    """Maximum Mean Discrepancy with a Gaussian kernel whose bandwidth comes from the reference (the
    median heuristic); p-value from `n_permutations` permutations of the pooled rows."""

    name = "mmd"
    config_keys = ("p_val", "n_permutations")
    tensor_keys = ("k_xx", "log_sigma")
    infer_sigma = False
    update_x_ref = None

    def __init__(self, x_ref: np.ndarray, *, p_val: float, n_permutations: int,
                 preprocess_fn: Callable | None = None) -> None:
        super().__init__(x_ref, p_val=p_val, preprocess_fn=preprocess_fn)
        self.n_permutations = n_permutations
        self.kernel = GaussianKernel()
        x = torch.from_numpy(self.x_ref)
        self.k_xx = self.kernel(x, x, infer_sigma=True)

    @property
    def log_sigma(self) -> Any:
        return self.kernel.log_sigma

    @log_sigma.setter
    def log_sigma(self, value: Any) -> None:
        self.kernel = GaussianKernel()
        self.kernel.log_sigma = value

    def score(self, x: np.ndarray) -> tuple[float, float, float]:
        return fast.mmd_score(self, x)


class LSDD(OwnDetector):
    """Least-Squares Density Difference on features normalised by the reference's mean and standard
    deviation, with a twentieth of the reference as kernel centres; p-value from permutations."""

    name = "lsdd"
    config_keys = ("p_val", "n_permutations", "n_kernel_centers", "lambda_rd_max")
    tensor_keys = ("means", "stds", "log_sigma", "kernel_centers", "k_xc", "H")

    def __init__(self, x_ref: np.ndarray, *, p_val: float, n_permutations: int,
                 preprocess_fn: Callable | None = None) -> None:
        super().__init__(x_ref, p_val=p_val, preprocess_fn=preprocess_fn)
        self.n_permutations = n_permutations
        self.n_kernel_centers = max(self.n // 20, 1)
        self.lambda_rd_max = LSDD_LAMBDA_RD_MAX
        ref = torch.as_tensor(self.x_ref)
        self.means, self.stds = ref.mean(0), ref.std(0)
        ref = self._normalize(ref)
        self.kernel = GaussianKernel()
        self.kernel(ref, ref, infer_sigma=True)
        perm = torch.randperm(self.x_ref.shape[0])
        c_inds, non_c_inds = perm[:self.n_kernel_centers], perm[self.n_kernel_centers:]
        self.kernel_centers = ref[c_inds]
        if np.unique(self.kernel_centers.numpy(), axis=0).shape[0] < self.n_kernel_centers:
            self.kernel_centers = self.kernel_centers + torch.randn(self.kernel_centers.shape) * 1e-6
        self.k_xc = self.kernel(ref[non_c_inds], self.kernel_centers)
        self.x_ref = ref.numpy()
        # H without the (pi sigma^2)^(d/2) factor, for stability in high dimensions (same p-values).
        self.H = GaussianKernel(np.sqrt(2.) * self.kernel.sigma)(self.kernel_centers, self.kernel_centers)

    @property
    def log_sigma(self) -> Any:
        return self.kernel.log_sigma

    @log_sigma.setter
    def log_sigma(self, value: Any) -> None:
        self.kernel = GaussianKernel()
        self.kernel.log_sigma = value

    def _normalize(self, x: Any) -> Any:
        return (torch.as_tensor(x) - self.means) / (self.stds + LSDD_EPS)

    def score(self, x: np.ndarray) -> tuple[float, float, float]:
        return fast.lsdd_score(self, x)


OWN = {"ks": KS, "mmd": MMD, "lsdd": LSDD}


def is_own(detector: Any) -> bool:
    return isinstance(detector, OwnDetector)


def is_saved_own(path: Path) -> bool:
    return (path / MARKER).is_file()


def load(path: Path) -> OwnDetector:
    config = json.loads((path / MARKER).read_text())
    return OWN[config["name"]].restore(path, config)
