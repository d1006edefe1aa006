"""The fused CPU kernels of `native/fused.c`, compiled on first use and called through ctypes.

Eager PyTorch makes one trip through memory per operation and costs a few microseconds per call, so a step that
also needs the per-row reductions ``‖x‖², ⟨x,d⟩, ‖d‖²`` before the parameters may move cost up to three times a
torch.optim.SGD step. The kernels step a whole param group per call: the buffer update, the reductions and the
update in one pass over each parameter (row by row, each row in cache), then the updates that waited for the
policy's decision (only the rows that had to wait); and they replace the per-step chains of small tensor ops of
the half-space rule, the row factors, the per-group sums and the NaN/Inf check of large gradients. They take
contiguous float32/float64 CPU tensors; the rest (GPU, half precision, odd layouts) takes the eager paths of
`_pass`, `_flatpass` and `_reduce`, which compute the same values.

The library is built with the system C compiler (``$CC``, else ``cc``) into ``$OTOV3_CACHE_DIR`` (default
``~/.cache/otov3``), keyed by the sources, the flags and the CPU, in under a second; without a compiler the eager
paths are used and `status()` says why. ``OTOV3_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from otov3.errors import OptimizerError

__all__ = ["DTYPES", "FACTORS", "FRESH", "HOLD", "PLAIN", "SUMS", "adam", "available", "finish", "first_nonfinite",
           "group_sums", "halfspace", "kind_ok", "row_factors", "sgd", "status"]

_LOG = logging.getLogger(__name__)
_SOURCES = ("fused.c", "rows.h")
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # -march=native may be refused (cross compilers)
_COMMON = ["-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd", "-fPIC", "-shared", "-std=c11"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
DTYPES = tuple(_SUFFIX)  # the float types the kernels take
_ABI = 6

# Per-tensor flags of the kernels' meta (see rows.h): reductions wanted, a fresh SGD buffer, and what happens to x.
SUMS, FRESH = 1, 2
HOLD, PLAIN, FACTORS = 0, 4, 8

_lock = threading.Lock()
_state: dict[str, object] = {}


def status() -> str:
    """Why the kernels are or are not in use (``"loaded <path>"``, ``"disabled by OTOV3_NATIVE=0"``, …)."""
    _library()
    return str(_state["status"])


def available() -> bool:
    """Whether the fused kernels are loaded (compiling them now if they were not built yet)."""
    return _library() is not None


def kind_ok(t: Tensor) -> bool:
    """Whether the kernels take tensors of ``t``'s kind (a contiguous float32/float64 CPU tensor)."""
    return t.dtype in _SUFFIX and t.device.type == "cpu" and t.is_contiguous()


def _ptrs(tensors: Sequence[Tensor | None]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[None if t is None else t.data_ptr() for t in tensors])


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _call(name: str, dtype: torch.dtype, *args: object) -> None:
    code = getattr(_library(), f"otov3_{name}_{_SUFFIX[dtype]}")(*args)
    if code == -(1 << 40):
        raise MemoryError(f"otov3 fused kernel {name}: out of memory for its per-tensor arguments")
    if code != 0:
        raise OptimizerError(f"otov3 fused kernel {name} refused tensor {-1 - code} of its batch (an otov3 bug; "
                             "please report it; OTOV3_NATIVE=0 runs the eager steps meanwhile)")


def sgd(xs: Sequence[Tensor], gs: Sequence[Tensor], bs: Sequence[Tensor] | None, meta: Sequence[int], *,
        keep: Tensor | None, sums: Tensor | None, fa: Tensor | None, fm: Tensor | None, held: Tensor | None,
        momentum: float, dampening: float, weight_decay: float, lr: float) -> None:
    """One SGD pass over tensors of one dtype (`_reduce.sgd_pass` for each, in one call). ``meta`` holds four
    ints per tensor (rows, width, first global row or -1, flags); ``keep``, ``sums`` (float64, ``(rows, 3)``),
    ``fa`` = m·a and ``fm`` = m are global per-row arrays, or None; ``held`` (uint8 per global row, or None:
    all) the rows of the `HOLD` tensors that wait, the others take the plain step now."""
    _call("sgd", xs[0].dtype, len(xs), (ctypes.c_int64 * len(meta))(*meta), _ptrs(xs), _ptrs(gs),
          None if bs is None else _ptrs(bs), _ptr(keep), _ptr(sums), _ptr(fa), _ptr(fm), _ptr(held), momentum,
          dampening, weight_decay, lr, torch.get_num_threads())


def adam(xs: Sequence[Tensor], gs: Sequence[Tensor], ms: Sequence[Tensor], vs: Sequence[Tensor],
         us: Sequence[Tensor | None], meta: Sequence[int], dmeta: Sequence[float], *, keep: Tensor | None,
         sums: Tensor | None, fa: Tensor | None, fm: Tensor | None, held: Tensor | None,
         betas: tuple[float, float], weight_decay: float, decoupled: bool, lr: float) -> None:
    """One Adam/AdamW pass over tensors of one dtype (`_reduce.adam_pass` for each). ``dmeta`` holds, per tensor,
    ``eps·sqrt(1−β2^t)``, the exact `sqrt` floor (0: none) and ``−α·σ``; ``us`` receive the directions of the
    tensors whose update waits (flag `HOLD`)."""
    _call("adam", xs[0].dtype, len(xs), (ctypes.c_int64 * len(meta))(*meta),
          (ctypes.c_double * len(dmeta))(*dmeta), _ptrs(xs), _ptrs(gs), _ptrs(ms), _ptrs(vs), _ptrs(us),
          _ptr(keep), _ptr(sums), _ptr(fa), _ptr(fm), _ptr(held), betas[0], betas[1],
          0.0 if decoupled else weight_decay,
          1 - lr * weight_decay if decoupled else 1.0, torch.get_num_threads())


def finish(xs: Sequence[Tensor], srcs: Sequence[Tensor], meta: Sequence[int], dmeta: Sequence[float], *,
           fa: Tensor, fm: Tensor, held: Tensor | None) -> None:
    """The held updates ``x ← (m·a − adj·m)·x + step·m·src`` row-wise (the ``held`` rows only, when given);
    ``dmeta`` holds ``step, adj`` per tensor."""
    _call("finish", xs[0].dtype, len(xs), (ctypes.c_int64 * len(meta))(*meta),
          (ctypes.c_double * len(dmeta))(*dmeta), _ptrs(xs), _ptrs(srcs), fa.data_ptr(), fm.data_ptr(), _ptr(held),
          torch.get_num_threads())


def halfspace(per_group: Tensor, targets: Tensor, *, lam: float, eta: float, kappa: float, epsilon: float,
              force: bool, post: float) -> tuple[Tensor, Tensor, Tensor, int]:
    """`_halfspace.decide` and the row multipliers of `HalfSpaceOptimizer._halfspace` in one call: returns
    ``(project, c, m, number projected)`` (``c`` and ``m`` already 0 on the projected groups)."""
    n = targets.numel()
    pg = per_group.contiguous()
    flags = targets.contiguous()
    c, m = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    project = torch.empty(n, dtype=torch.bool)
    count = _library().otov3_halfspace(n, pg.data_ptr(), flags.data_ptr(), lam, eta, kappa, epsilon, int(force),
                                       post, c.data_ptr(), m.data_ptr(), project.data_ptr())
    return project, c, m, int(count)


def row_factors(row_group: Tensor, n_groups: int, c: Tensor | None, m: Tensor | None, alpha: Tensor, keep: Tensor,
                out_m: Tensor, out_ma: Tensor | None) -> None:
    """`RowOps._row_factors` for one CPU float buffer pair: ``out_m`` = m per row, ``out_ma`` = m·(keep − α·c)."""
    _call("row_factors", out_m.dtype, row_group.numel(), row_group.data_ptr(), n_groups, _ptr(c), _ptr(m),
          alpha.data_ptr(), keep.data_ptr(), out_m.data_ptr(), _ptr(out_ma))


def group_sums(row_group: Tensor, sums: Tensor, n_groups: int, factors: Sequence[float]) -> Tensor | None:
    """``(G, 6)`` per-group sums of the ``(rows, 3)`` float64 row reductions times ``factors`` over the columns
    ``‖x‖², ⟨x,d⟩, ‖d‖², ‖x‖², ‖x‖², ⟨x,d⟩``; None when a row sum is NaN or Inf."""
    out = torch.empty(n_groups, 6, dtype=torch.float64)
    bad = _library().otov3_group_sums(row_group.numel(), row_group.data_ptr(), sums.data_ptr(), n_groups,
                                      (ctypes.c_double * 6)(*factors), out.data_ptr())
    return None if bad else out


def first_nonfinite(tensors: Sequence[Tensor]) -> int:
    """The index of the first tensor (all of one kind, `kind_ok`) holding a NaN or Inf, or -1."""
    fn = getattr(_library(), f"otov3_first_nonfinite_{_SUFFIX[tensors[0].dtype]}")
    meta = [v for t in tensors for v in (t.numel(), 1, -1, 0)]
    code = int(fn(len(tensors), _ptrs(tensors), (ctypes.c_int64 * len(meta))(*meta), torch.get_num_threads()))
    if code == -(1 << 40):
        raise MemoryError("otov3 fused kernel first_nonfinite: out of memory")
    return code


# ------------------------------------------------------------------------------------------------ the build
def _library() -> ctypes.CDLL | None:
    lib = _state.get("lib", False)
    if lib is not False:
        return lib  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["status"] = _load()
            _LOG.info("otov3 fused optimizer kernels: %s", _state["status"])
            if _state["lib"] is None and not str(_state["status"]).startswith("disabled"):
                warnings.warn(f"otov3: fused optimizer kernels: {_state['status']}. The optimizers' CPU steps run as "
                              "eager PyTorch ops instead: the same results, up to 3x slower than torch.optim. Install "
                              "a C compiler (e.g. gcc) and set CC, or set OTOV3_NATIVE=0 to choose the eager steps "
                              "without this warning.", RuntimeWarning, stacklevel=3)
    return _state["lib"]  # type: ignore[return-value]


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("OTOV3_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by OTOV3_NATIVE=0; the eager passes are used"
    if sys.platform == "win32":
        return None, "not built on Windows; the eager passes are used"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        return None, "no C compiler (set CC or install gcc); the eager passes are used"
    src = Path(__file__).with_name("native")
    try:
        text = b"".join((src / name).read_bytes() for name in _SOURCES)
    except OSError as exc:
        return None, f"kernel sources missing ({exc}); the eager passes are used"
    try:
        cache = _cache_dir()
    except OSError as exc:
        return None, f"no cache folder for the kernels ({exc}); the eager passes are used"
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(text + repr((flags, _COMMON, compiler, platform.machine(), _cpu_id())).encode())
        target = cache / f"otov3_fused_{key.hexdigest()[:16]}.so"
        if not target.exists():
            error = _compile(compiler, flags, src, target)
            if error:
                errors.append(error)
                continue
        try:
            lib = ctypes.CDLL(str(target))
            _declare(lib)
            if lib.otov3_abi_version() != _ABI:
                raise OSError("ABI version mismatch")
        except (OSError, AttributeError) as exc:
            errors.append(f"{target}: {exc}")
            continue
        return lib, f"loaded {target}"
    return None, "could not build the kernels (" + "; ".join(errors)[-500:] + "); the eager passes are used"


def _compile(compiler: str, flags: list[str], src: Path, target: Path) -> str | None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *flags, *_COMMON, "-I", str(src), "-o", tmp, str(src / "fused.c"), "-lpthread", "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            return f"{' '.join(cmd[:2])}: {done.stderr.strip()[-300:]}"
        os.replace(tmp, target)  # atomic: concurrent processes (DDP ranks) never load a half-written file
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{compiler}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cache_dir() -> Path:
    given = os.environ.get("OTOV3_CACHE_DIR")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "otov3"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    # a shared temporary directory: only a private folder of ours, so that nobody else can plant a library there
    path = Path(tempfile.gettempdir()) / f"otov3-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise OSError(f"{path} is not a private folder of this user; set OTOV3_CACHE_DIR")
    return path


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags (a shared cache across machines)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, dbl = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double
    for suffix in _SUFFIX.values():
        sgd = getattr(lib, f"otov3_sgd_{suffix}")
        sgd.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, dbl, dbl, dbl, dbl, i64]
        adam = getattr(lib, f"otov3_adam_{suffix}")
        adam.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, dbl, dbl, dbl, dbl, i64]
        fin = getattr(lib, f"otov3_finish_{suffix}")
        fin.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64]
        check = getattr(lib, f"otov3_first_nonfinite_{suffix}")
        check.argtypes = [i64, ptr, ptr, i64]
        factors = getattr(lib, f"otov3_row_factors_{suffix}")
        factors.argtypes = [i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr]
        for fn in (sgd, adam, fin, check, factors):
            fn.restype = i64
    lib.otov3_halfspace.argtypes = [i64, ptr, ptr, dbl, dbl, dbl, dbl, i64, dbl, ptr, ptr, ptr]
    lib.otov3_halfspace.restype = i64
    lib.otov3_group_sums.argtypes = [i64, ptr, ptr, i64, ptr, ptr]
    lib.otov3_group_sums.restype = i64
    lib.otov3_abi_version.restype = ctypes.c_int64
    lib.otov3_abi_version.argtypes = []
