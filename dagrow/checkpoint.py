"""Run directories: one consistent checkpoint, committed atomically, plus the files people read.

A run directory holds:

- ``checkpoint.safetensors``: everything a run needs to continue exactly (tensors: the weights
  ``model/<name>``, the optimizer state ``optim/<index>/<key>``, the random states ``rng/...``;
  metadata ``dagrow.run``: the spec, the settings, the data source, the step, the schedule, the data
  order, the python and numpy random states, the optimizer's param groups with parameter names, and
  how many history lines belong to it). It is written to a temporary file and renamed: a run killed
  at any moment leaves either the previous checkpoint or the new one.
- ``history.jsonl``: one JSON object per event, appended; lines beyond the checkpoint's count (written
  by a run killed before its next checkpoint) are dropped when the run resumes, and written again.
- ``spec.yaml``, ``model.safetensors`` (a bundle), ``architecture.dot/.png`` (growth highlighted against
  the starting spec), ``metrics.csv`` and ``growth.png`` (:mod:`dagrow.run_plots`): outputs, rewritten
  from the checkpoint's state after each commit (the drawing when the architecture changed) and at the end.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .bundle import atomic_write, atomic_write_text, check_finite

FORMAT = "dagrow-run/1"
CHECKPOINT = "checkpoint.safetensors"
HISTORY = "history.jsonl"
OUTPUTS = (
    "spec.yaml",
    "model.safetensors",
    "architecture.dot",
    "architecture.png",
    "metrics.csv",
    "growth.png",
)
# fault injection for the kill tests: "checkpoint:N" kills the process (SIGKILL) while the N-th
# checkpoint of this process is written, after its temporary file and before the rename
FAULT_ENV = "DAGROW_FAULT"
# the pictures of a run (growth.png, architecture.png) cost a matplotlib drawing each: at most this
# often in seconds while the run goes on, and always at its end
PICTURE_INTERVAL = 10.0


META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "spec": dict,
    "config": dict,
    "step": int,
    "finished": bool,
    "grower": dict,
    "stream": dict,
    "history_lines": int,
    "rng": dict,
}
"""What every checkpoint's metadata holds (checked when it is read)."""


class RunError(ValueError):
    """A run directory that cannot be used as asked (the message names it)."""


@dataclass
class Checkpoint:
    """The state of a run between two rounds."""

    meta: dict[str, Any]  # JSON: spec, config, source, step, schedule, stream, rng, history_lines, ...
    weights: dict[str, Tensor]
    optimizer: dict[str, Any] | None = None  # torch's state_dict() of the optimizer
    tensors: dict[str, Tensor] = field(default_factory=dict)  # random states


def optimizer_names(opt: torch.optim.Optimizer, model: nn.Module) -> list[list[str]]:
    """The parameter names of each param group, in the group's order."""
    names = {id(p): n for n, p in model.named_parameters()}
    try:
        return [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    except KeyError:
        raise RunError(
            "the optimizer holds a parameter that is not the model's: cannot checkpoint it"
        ) from None


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _fault(count: int) -> None:
    if os.environ.get(FAULT_ENV) == f"checkpoint:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


class RunDirectory:
    """A folder holding one run (module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.commits = 0  # checkpoints written by this process
        self._drawn: Any = None  # the spec architecture.png shows (redrawn when it changes)
        self._drawn_dot: Any = None  # the spec architecture.dot shows
        self._pictured_at: float | None = None  # when the pictures were last drawn (time.monotonic)
        self.picture_interval = PICTURE_INTERVAL

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    def holds_run(self) -> bool:
        return self.checkpoint_path.is_file() or self.history_path.is_file()

    def prepare(self, *, overwrite: bool = False) -> None:
        """Make the folder ready for a new run: refuse one that holds a run unless ``overwrite`` (then
        its run files are removed; other files are left alone), and check that it can be written."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: --out names an existing file, not a folder")
        if self.holds_run() and not overwrite:
            raise RunError(
                f"{self.path} already holds a run: continue it with --resume {self.path}, or replace it "
                "with --overwrite"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, HISTORY, *OUTPUTS):
            target = self.path / name
            if target.is_dir():
                raise RunError(f"{target}: is a folder; the run writes a file there")
            if overwrite:
                target.unlink(missing_ok=True)
        probe = self.path / ".dagrow-write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise RunError(f"{self.path}: cannot write there ({exc.strerror})") from None
        self.clean()

    def clean(self) -> list[Path]:
        """Remove the temporary files of writes that a killed run left behind."""
        leftovers = [p for p in self.path.glob(".*.tmp") if p.is_file()]
        for p in leftovers:
            p.unlink(missing_ok=True)
        return leftovers

    def append_history(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
            f.flush()

    def read_history(self, count: int | None = None) -> list[dict[str, Any]]:
        """The first ``count`` history lines (all complete ones when None); the file is truncated to
        them, so that lines written after the checkpoint are written again exactly once."""
        if not self.history_path.is_file():
            if count:
                raise RunError(f"{self.history_path}: missing, but the checkpoint counts {count} lines")
            return []
        try:
            text = self.history_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RunError(
                f"{self.history_path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        raw = text.split("\n")
        complete = raw[:-1]  # the part after the last newline is an unfinished line
        keep = complete if count is None else complete[:count]
        if count is not None and len(keep) < count:
            raise RunError(f"{self.history_path}: {len(keep)} lines, but the checkpoint counts {count}")
        lines = []
        for number, line in enumerate(keep, 1):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunError(f"{self.history_path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise RunError(f"{self.history_path}:{number}: a history line is a JSON object")
            lines.append(value)
        if len(keep) != len(raw) - 1 or raw[-1]:
            text = "".join(k + "\n" for k in keep)

            def write(tmp: Path) -> None:
                tmp.write_text(text, encoding="utf-8")

            atomic_write(self.history_path, write)
        return lines

    def commit(self, ckpt: Checkpoint) -> None:
        """Write the checkpoint atomically; weights with NaN or infinite values are refused
        (:class:`~dagrow.bundle.NonFiniteWeights`) and the previous checkpoint stays."""
        check_finite(ckpt.weights, self.checkpoint_path)
        tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in ckpt.weights.items()}
        meta = dict(ckpt.meta)
        if ckpt.optimizer is not None:
            opt_tensors, meta["optimizer"] = _flatten_optimizer(ckpt.optimizer)
            tensors.update(opt_tensors)
        tensors.update({f"rng/{k}": v.contiguous() for k, v in ckpt.tensors.items()})
        self.commits += 1
        count = self.commits

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "dagrow.run": json.dumps(meta)})
            _fault(count)

        atomic_write(self.checkpoint_path, write)

    def write_outputs(
        self,
        model: nn.Module,
        *,
        drawing: bool = False,
        history: list[dict[str, Any]] | None = None,
        base: Any = None,
        start_params: int | None = None,
    ) -> list[str]:
        """``model.safetensors`` (a bundle), ``spec.yaml`` and, with ``history``, ``metrics.csv``, each
        atomic; ``architecture.dot`` when the architecture changed since it was written, growth
        highlighted against ``base`` (the starting spec). The pictures, ``growth.png`` (``start_params``:
        the size at step 0) and ``architecture.png``, cost a matplotlib drawing each: they are drawn with
        ``drawing`` (the end of a run), the first time, and then at most every :attr:`picture_interval`
        seconds. Returns notes on what could not be written (the pictures need matplotlib, the
        optional ``plot`` extra)."""
        from .bundle import save
        from .compile import spec_of

        spec = spec_of(model)
        save(model, self.path / "model.safetensors")
        atomic_write_text(self.path / "spec.yaml", spec.to_yaml())
        notes: list[str] = []
        now = time.monotonic()
        pictures = drawing or self._pictured_at is None or now - self._pictured_at >= self.picture_interval
        if pictures:
            self._pictured_at = now
        if history is not None:
            from .run_plots import write_growth_png, write_metrics_csv

            write_metrics_csv(history, self.path / "metrics.csv")
            try:
                if pictures:
                    write_growth_png(
                        history, self.path / "growth.png", start_params=start_params, title=spec.name
                    )
            except ImportError as exc:
                notes.append(f"growth.png not written ({exc})")
        if spec != self._drawn_dot:
            from .drawing import to_dot

            atomic_write_text(self.path / "architecture.dot", to_dot(spec, base))
            self._drawn_dot = spec
        if not pictures or spec == self._drawn:
            return notes
        from .drawing import write_png

        try:
            write_png(spec, self.path / "architecture.png", base)
            self._drawn = spec
        except ImportError as exc:
            notes.append(f"architecture.png not written ({exc})")
        return notes

    def load(self) -> Checkpoint:
        path = self.checkpoint_path
        if not path.is_file():
            hint = (
                " (the run was stopped before its first checkpoint: start it again)"
                if self.path.is_dir()
                else ""
            )
            raise RunError(f"{self.path}: nothing to resume, no {CHECKPOINT}{hint}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise RunError(f"{path}: not a dagrow run checkpoint (format {header.get('format')!r})")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
            meta = json.loads(header["dagrow.run"])
        except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as exc:
            raise RunError(f"{path}: unreadable checkpoint ({exc})") from None
        if not isinstance(meta, dict):
            raise RunError(f"{path}: the checkpoint's metadata is not a JSON object")
        wrong = [k for k, kind in META_FIELDS.items() if not isinstance(meta.get(k), kind)]
        if wrong:
            raise RunError(f"{path}: damaged checkpoint: missing or malformed {', '.join(wrong)}")
        weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        rng = {k[len("rng/") :]: v for k, v in tensors.items() if k.startswith("rng/")}
        if not {"torch", "growth"} <= rng.keys():
            raise RunError(f"{path}: damaged checkpoint: missing the random states (rng/torch, rng/growth)")
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim/")}
        try:
            optimizer = _unflatten_optimizer(opt_tensors, meta["optimizer"]) if "optimizer" in meta else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunError(
                f"{path}: damaged checkpoint: its optimizer state is malformed ({exc!r})"
            ) from None
        return Checkpoint(meta, weights, optimizer, rng)
