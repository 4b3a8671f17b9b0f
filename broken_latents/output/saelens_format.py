"""SAEs in and out of SAELens' on-disk format, and a numpy SAE to encode activations with.

A SAELens folder is `cfg.json` + `sae_weights.safetensors`; `sae_lens.SAE.load_from_disk(folder)`
builds the architecture `cfg.json` names and loads the weights strictly (exactly its parameters):
standard (ReLU): W_enc [D, K], W_dec [K, D], b_enc [K], b_dec [D]; jumprelu: the same plus
threshold [K]. The cfg.json we write (SAELens 6 layout):

    {"architecture": "standard" | "jumprelu", "d_in": D, "d_sae": K, "dtype": "float32",
     "device": "cpu", "apply_b_dec_to_input": true, "normalize_activations": "none",
     "reshape_activations": "none",
     "metadata": {"sae_lens_version": "6.0.0", "tied": bool, "activation": "relu" | "jumprelu",
                  "written_by": "broken-latents", ...}}

`metadata.sae_lens_version` names the cfg.json layout, not a SAELens that wrote it: SAELens'
loader converts a cfg.json without it as a pre-6 config, which keeps only its own metadata keys
and would drop `tied`. A tied SAE has no encoder of its own, so SAELens gets one written out:
W_enc = W_dec^T and b_enc = 0, and `metadata.tied` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config.schema import ConfigError
from ..config.toml_io import read_json

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
LAYOUT_VERSION = "6.0.0"
READABLE_NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")


def write_saelens(
    folder: str | Path,
    tensors: dict,
    activation: str = "relu",
    tied: bool = False,
    metadata: dict | None = None,
    k: int | None = None,
) -> Path:
    """Write one SAE as a SAELens folder. `tensors`: W_enc, W_dec, b_enc, b_dec (+ threshold for
    jumprelu and batchtopk), numpy or torch; a tied SAE's encoder is rewritten from W_dec; `k`: topk's.
    Returns the folder."""
    import torch
    from safetensors.torch import save_file

    from ..saes.activations import ACTIVATIONS, saelens_architectures

    if activation not in ACTIVATIONS:
        raise ConfigError(
            "activation",
            f"{activation!r} has no SAELens architecture; allowed: {', '.join(ACTIVATIONS)}",
        )
    weights = {
        k: torch.as_tensor(
            np.asarray(v.detach().cpu() if hasattr(v, "detach") else v), dtype=torch.float32
        )
        for k, v in tensors.items()
        if k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    }
    d_sae, d_in = weights["W_dec"].shape
    if tied:
        weights["W_enc"] = weights[
            "W_dec"
        ].T.clone()  # one latent: .T is contiguous and would share memory
        weights["b_enc"] = torch.zeros(d_sae)
    architecture = ACTIVATIONS[activation].saelens
    saved_as = saelens_architectures()[architecture]  # how SAELens will compute it
    if saved_as.uses_k and not (k and k >= 1):
        raise ConfigError(
            "k", f"a {architecture} SAE needs k >= 1 to be written for SAELens, got {k!r}"
        )
    if saved_as.thresholded:
        # Threshold 0 makes a JumpReLU a ReLU, which is what an SAE without one computed.
        weights.setdefault("threshold", torch.zeros(d_sae))
    else:
        weights.pop("threshold", None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / WEIGHTS_FILENAME))
    cfg = {
        "architecture": architecture,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **({"k": int(k)} if saved_as.uses_k else {}),
        "metadata": {
            "sae_lens_version": LAYOUT_VERSION,
            "written_by": "broken-latents",
            "tied": bool(tied),
            "activation": activation,
            **(metadata or {}),
        },
    }
    (folder / CFG_FILENAME).write_text(json.dumps(cfg, indent=1))
    return folder


@dataclass
class NumpySAE:
    """An SAE's weights in SAELens layout (float32), enough to encode activations in numpy."""

    W_enc: np.ndarray  # [D, K]
    W_dec: np.ndarray  # [K, D]
    b_enc: np.ndarray  # [K]
    b_dec: np.ndarray  # [D]
    architecture: str = "standard"
    threshold: np.ndarray | None = None  # [K], jumprelu
    k: int | None = None  # topk
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    source: str = ""
    cfg: dict = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x_BD: np.ndarray) -> np.ndarray:
        """Latent activations [B, K] (float32) of a chunk of activations [B, D], as SAELens' encode."""
        x = np.asarray(x_BD, dtype=np.float32)
        if self.normalize_activations == "constant_norm_rescale":
            x = x * (np.sqrt(self.d_in) / np.linalg.norm(x, axis=-1, keepdims=True))
        elif self.normalize_activations == "layer_norm":
            x = x - x.mean(-1, keepdims=True)
            x = x / (x.std(-1, ddof=1, keepdims=True) + 1e-5)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre_BK = x @ self.W_enc  # one float32 matmul (OpenBLAS: one thread per core)
        pre_BK += self.b_enc  # in place: no second [B, K] array per chunk
        import torch

        from ..saes.activations import saelens_architectures

        threshold = (
            None
            if self.threshold is None
            else torch.from_numpy(np.asarray(self.threshold, np.float32))
        )
        infer = saelens_architectures()[self.architecture].infer
        return infer(torch.from_numpy(np.ascontiguousarray(pre_BK)), threshold, self.k).numpy()


def load_sae(path: str | Path) -> NumpySAE:
    """A SAELens folder (standard, jumprelu, topk) or a run's `weights/LABEL-seedN.safetensors`.

    Raises ConfigError naming the problem (missing file, unknown architecture, bad shapes)."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file() and path.suffix == ".safetensors":
        # A run's weights file: a threshold means JumpReLU, as rundir writes it.
        tensors = _read_tensors(path)
        return _from_tensors(
            tensors, "jumprelu" if "threshold" in tensors else "standard", path, source=str(path)
        )
    if not path.exists():
        raise ConfigError(
            "SAE",
            f"{path} does not exist; give a SAELens folder (cfg.json + {WEIGHTS_FILENAME}) "
            "or a run's weights/LABEL-seedN.safetensors",
        )
    raise ConfigError("SAE", f"{path} is neither a SAELens folder nor a .safetensors file")


def _load_folder(folder: Path) -> NumpySAE:
    cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for needed in (cfg_path, weights_path):
        if not needed.is_file():
            raise ConfigError("SAE", f"{folder} is not a SAELens folder: {needed.name} is missing")
    from ..saes.activations import saelens_architectures

    cfg = read_json(cfg_path, "SAE")
    # A cfg.json from before SAELens 6 has no architecture: standard, unless its activation says topk.
    kwargs = cfg.get("activation_fn_kwargs") or {}
    default = (
        "topk"
        if (cfg.get("activation_fn") or cfg.get("activation_fn_str")) == "topk"
        else "standard"
    )
    architecture = cfg.get("architecture", default)
    readable = saelens_architectures()
    if architecture not in readable:
        raise ConfigError(
            "SAE",
            f"{cfg_path}: architecture {architecture!r} is not supported; "
            f"allowed: {', '.join(readable)}",
        )
    normalize = cfg.get("normalize_activations") or "none"
    if normalize is False:
        normalize = "none"
    if normalize not in READABLE_NORMALIZATIONS:
        raise ConfigError(
            "SAE",
            f"{cfg_path}: normalize_activations {normalize!r} is not supported (it needs a "
            f"scaling factor from the training data); allowed: {', '.join(READABLE_NORMALIZATIONS)}",
        )
    uses_k = readable[architecture].uses_k
    if uses_k and cfg.get("rescale_acts_by_decoder_norm"):
        raise ConfigError(
            "SAE", f"{cfg_path}: {architecture} with rescale_acts_by_decoder_norm is not supported"
        )
    k = int(cfg.get("k") or kwargs.get("k") or 0) if uses_k else None
    if uses_k and k < 1:
        raise ConfigError("SAE", f"{cfg_path}: a {architecture} SAE needs k >= 1")
    sae = _from_tensors(
        _read_tensors(weights_path),
        architecture,
        weights_path,
        k=k,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize,
        source=str(folder),
        cfg=cfg,
    )
    for key, expected in (("d_in", sae.d_in), ("d_sae", sae.d_sae)):
        if key in cfg and int(cfg[key]) != expected:
            raise ConfigError(
                "SAE", f"{cfg_path}: {key} is {cfg[key]} but the weights have {expected}"
            )
    return sae


def _from_tensors(
    tensors: dict[str, np.ndarray], architecture: str, where: Path, **settings
) -> NumpySAE:
    from ..saes.activations import saelens_architectures

    thresholded = saelens_architectures()[architecture].thresholded
    missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(tensors)
    if thresholded and "threshold" not in tensors:
        missing.add("threshold")
    if missing:
        raise ConfigError(
            "SAE", f"{where} lacks {', '.join(sorted(missing))} for architecture {architecture!r}"
        )
    sae = NumpySAE(
        W_enc=tensors["W_enc"],
        W_dec=tensors["W_dec"],
        b_enc=tensors["b_enc"],
        b_dec=tensors["b_dec"],
        architecture=architecture,
        threshold=tensors.get("threshold") if thresholded else None,
        **settings,
    )
    return _checked(sae, where)


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    wanted = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    try:
        # The torch framework reads every dtype (bfloat16 has no numpy type).
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k).float().numpy() for k in f.keys() if k in wanted}
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ConfigError("SAE", f"{path} is not a readable safetensors file: {err}") from None


def _checked(sae: NumpySAE, where: Path) -> NumpySAE:
    D, K = sae.W_enc.shape if sae.W_enc.ndim == 2 else (-1, -1)
    shapes = {"W_enc": (D, K), "W_dec": (K, D), "b_enc": (K,), "b_dec": (D,)}
    if sae.threshold is not None:
        shapes["threshold"] = (K,)
    for name, shape in shapes.items():
        if getattr(sae, name).shape != shape:
            raise ConfigError(
                "SAE",
                f"{where}: {name} has shape {list(getattr(sae, name).shape)}, expected "
                f"{list(shape)} (SAELens layout W_enc [D, K], W_dec [K, D])",
            )
    return sae
