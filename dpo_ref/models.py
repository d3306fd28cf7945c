"""Model specs -> loadable locations, content fingerprints for cache keys, and the device/dtype policy.

A spec is `world:<name>` (a model of the embedded world), a local directory saved with `save_pretrained`, or a
Hugging Face hub id (resolved from the local hub cache; dporef never needs the network at run time).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import UserError
from .store import content_hash, file_hash


@dataclass(frozen=True)
class ModelRef:
    spec: str  # as written in the YAML
    location: str  # directory or hub id handed to from_pretrained
    fingerprint: str  # content hash: changes whenever the weights, config or tokenizer change


def resolve(spec: str, world=None, where: str = "model") -> ModelRef:
    """Turn a spec into a `ModelRef`; a world spec needs the built `world`."""
    if spec.startswith("world:"):
        name = spec.removeprefix("world:")
        if world is None or name not in world.models:
            allowed = ", ".join(f"world:{n}" for n in (world.models if world else []))
            raise UserError(where, f"unknown world model {spec!r}; allowed: {allowed}")
        path = world.models[name]
        return ModelRef(spec, str(path), file_hash(path))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(where, f"{spec} is a directory without config.json (not a saved model)")
        return ModelRef(spec, str(path), _dir_fingerprint(path))
    if spec.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(spec, local_files_only=True)
        except Exception:
            raise UserError(where, f"hub model {spec!r} is not in the local cache (dporef works offline)") from None
        return ModelRef(spec, local, _dir_fingerprint(Path(local)))
    raise UserError(where, f"{spec!r} is neither world:<name>, a model directory, nor a hub id (org/name)")


def _dir_fingerprint(path: Path) -> str:
    """Full content hash for small models; for large ones, config + tokenizer + weight file names and sizes."""
    files = [p for p in path.rglob("*") if p.is_file()]
    if sum(p.stat().st_size for p in files) < 2**30:
        return file_hash(path)
    summary = {str(p.relative_to(path)): p.stat().st_size for p in files}
    small = {str(p.relative_to(path)): file_hash(p) for p in files if p.suffix in {".json", ".jinja", ".model"}}
    return content_hash([summary, small])


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(precision: str) -> bool:
    """`auto` means bf16 on a GPU that supports it and fp32 on CPU (CPU bf16 is slow and lossy for tiny models)."""
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def load_tokenizer(ref: ModelRef) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(ref.location)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: ModelRef, bf16: bool = False) -> PreTrainedModel:
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(ref.location, dtype=dtype)
    return model.to(device())
