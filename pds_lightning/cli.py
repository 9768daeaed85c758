"""`pds-lightning`: LightningCLI (fit / validate / test / predict) plus the converter, the evaluator and the
shipped configs (`--config` takes a shipped config name where no such file exists)."""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from typing import Any

import yaml
from jsonargparse import get_loader, set_loader
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pds_lightning.checkpoints import as_lightning_checkpoint, save_checkpoint
from pds_lightning.classpath import import_class
from pds_lightning.data import ImageDataModule
from pds_lightning.data.settings import GROUPS, OLD_DATA_KEYS, grouped_data, old_data_keys_warning
from pds_lightning.fileio import write_new
from pds_lightning.legacy import flat_config_error, is_flat, old_step_name, old_step_name_error
from pds_lightning.models.checkpoint import check_finite_weights
from pds_lightning.checkpoints import read_checkpoint
from pds_lightning.module import ScoreModule
from pds_lightning.preemption import EXIT_STATUS, sigterm_callbacks
from pds_lightning.resources import config_path, shipped_configs
from pds_lightning.yamlfile import check_file, check_text, check_value, load_file

# Commands that are not Trainer entry points; each module exposes main(argv).
EXTRA_COMMANDS = {
    "convert-score-sde": ("pds_lightning.convert", "turn a score_sde checkpoint into a pds_lightning checkpoint"),
    "convert-diffusers": ("pds_lightning.convert_diffusers", "turn a diffusers NCSN++ folder (google/ncsnpp-*) into one"),
    "export": ("pds_lightning.export", "write a checkpoint's weights as .safetensors (no pickle)"),
    "evaluate": ("pds_lightning.evaluate", "score a folder of samples (spectral error, FID/KID with features)"),
    "configs": ("pds_lightning.configs", "list the shipped configs, or write one out (configs write NAME [DEST])"),
}


# Trainer commands under another name: `likelihood` is `test` (ScoreModule.test_step scores bits/dim).
ALIASES = {"likelihood": ("test", "bits/dim of --data.source images through the probability-flow ODE "
                                  "(model.likelihood settings)")}


# Set to 1 to see the full traceback of an error that the command otherwise reports in one line.
TRACEBACK_ENV = "PDS_LIGHTNING_TRACEBACK"


def load_checkpoint_safely(path, map_location: Any = "cpu") -> dict[str, Any]:
    """`checkpoints.read_checkpoint` (weights_only=True, one-line errors; `.safetensors` too) in Lightning's layout,
    filled in where the file lacks it (`checkpoints.as_lightning_checkpoint`); non-finite weights named."""
    checkpoint = as_lightning_checkpoint(read_checkpoint(path, map_location=map_location))
    check_finite_weights(checkpoint["state_dict"], f"checkpoint {path}")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, loading with `weights_only=True` whatever the caller asks, and saving local
    checkpoints whole or not at all (`checkpoints.save_checkpoint`; Lightning's own writer left a truncated
    `.ckpt` on a full disk)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's fsspec writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            save_checkpoint(checkpoint, path)
        except OSError as err:  # ENOSPC, EROFS, EACCES, ...: one line naming the checkpoint, not a traceback
            raise OSError(err.errno, f"cannot write the checkpoint {path}: {err.strerror or err}; nothing was "
                                     "written there: free disk space or choose a writable checkpoint folder "
                                     "(--trainer.default_root_dir)") from err

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Storages stay on the CPU until Lightning moves the model (as TorchCheckpointIO's default does).
        return load_checkpoint_safely(path, map_location=map_location or "cpu")


def worker_error(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker, whose text torch replaces by
    "Caught X in DataLoader worker process N. Original Traceback ..."; `text` itself otherwise."""
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]  # frame and source lines are indented
    message = "\n".join(lines[frames[-1] + 1:] if frames else lines[-1:]).strip()
    return re.sub(r"^[A-Za-z_][\w.]*: ", "", message)  # "ValueError: ", as the 0-worker message has no prefix


def error_line(err: BaseException) -> str:
    """A one-line message for an error the user can fix (config, data, checkpoint, numerics, disk); for an
    error of a loader worker, the worker's own message (as with 0 workers)."""
    text = worker_error(str(err).strip())
    if text.startswith("Does not validate against any of the Union subtypes"):
        # jsonargparse wraps the real reason of an Optional[...] argument in a list of per-type errors.
        reasons = [line.strip()[2:] for line in text.splitlines()
                   if line.strip().startswith("- ") and "NoneType" not in line]
        text = "; ".join(reasons) or text
    return " ".join(text.split()) or type(err).__name__


def record_name(stage: str, n: int = 0) -> str:
    """The n-th free name of a run record: fit keeps Lightning's `config.yaml`, the other entry points write
    `<stage>_config.yaml` (`likelihood` is `test`); a name taken by an earlier run gets `_1`, `_2`, ..."""
    stem = "config" if stage == "fit" else f"{stage}_config"
    return f"{stem}.yaml" if n == 0 else f"{stem}_{n}.yaml"


def write_new_record(folder: str, stage: str, text: str) -> str:
    """Write `text` to the first free record name in `folder`, whole or not at all and never over an existing file
    (`fileio.write_new`: a hard link never replaces its target, so two runs sharing a folder keep both records).
    Returns the path written."""
    data = text.encode()
    try:
        for n in range(10_000):
            path = os.path.join(folder, record_name(stage, n))
            if write_new(path, data):
                return path
        raise OSError(f"{folder} already holds 10000 {record_name(stage)} records; use a new log directory")
    except OSError as err:
        raise OSError(f"cannot write the run's config record in {folder}: {err}; free space (or raise the file-size "
                      "limit) or choose another --trainer.default_root_dir") from err


class RunConfigCallback(SaveConfigCallback):
    """Records each run's full config in its log directory without ever replacing another run's record
    (LightningCLI's callback writes one `config.yaml` in place: a predict with the fit's fixed log directory
    overwrote the fit's, and a failed write left it truncated). See `write_new_record` for the names."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a collective call: every rank takes part
        if trainer.is_global_zero:
            stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
            self.path = write_new_record(log_dir, stage, self.parser.dump(self.config, skip_none=False))
        self.already_saved = trainer.strategy.broadcast(True)
class OneLineErrorParser(LightningArgumentParser):
    """A parser whose errors end in one line: jsonargparse spreads a component's error (e.g. "Option 'S_churn'
    is not accepted" for a field of another sampler) over an indented list of Union subtypes. Options must be
    spelled out: argparse's prefix matching took `--data.predict.seed 0-3` for `--data.predict.seeds`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        lines = [line.strip().lstrip("- ") for line in str(message).splitlines()]
        keep = [line for line in lines if line and not line.startswith(("Subtypes:", "Given value", "Errors:",
                                                                        "Expected a <class 'NoneType'>"))]
        return super().error(" ".join(keep), ex)


def value_name(text: str) -> str:
    """How an error names a YAML value that came from no file: its start."""
    text = " ".join(text.split())
    return f"value {text[:40] + '...' if len(text) > 40 else text!r}"


def bounded(load):
    """jsonargparse's YAML loader `load`, refusing first a text whose aliases expand beyond the bound
    (yamlfile.check_value; ConfigFileError, one line): jsonargparse parses with it every config file and every
    YAML value, from the command line or inside a config, and copies what it gets node by node."""

    def load_bounded(text: str, path: str | None = None) -> Any:
        check_value(text, str(path) if path else value_name(text))
        return with_grouped_data(load(text), str(path) if path else "a config value")

    load_bounded.bounds = load
    return load_bounded


def with_grouped_data(config: Any, where: str, warn: bool = True) -> Any:
    """A loaded config with the old flat keys of its `data` section, at the top or under a subcommand's key, moved
    into their groups (`data.settings.grouped_data`: one warning, a contradiction refused); anything else as it is.
    jsonargparse reads every config file through the YAML loader (`bounded`), so this is where old configs load."""
    if not isinstance(config, dict):
        return config
    out = _grouped_section(config, where, warn)
    for key in LightningCLI.subcommands():
        if isinstance(out.get(key), dict):
            out[key] = _grouped_section(out[key], where, warn)
    return out


def _grouped_section(section: dict, where: str, warn: bool) -> dict:
    data = section.get("data")
    if not (isinstance(data, dict) and any(key in OLD_DATA_KEYS for key in data)):
        return section
    return {**section, "data": grouped_data(data, where, warn=warn)}


def bound_yaml_loader() -> None:
    """Route the YAML that jsonargparse parses (its "yaml" parser mode, LightningCLI's) through `bounded`, once."""
    load = get_loader("yaml")
    if not hasattr(load, "bounds"):
        set_loader("yaml", bounded(load), exceptions=(yaml.YAMLError,))


class PDSLightningCLI(LightningCLI):
    """LightningCLI whose model and data agree on the image geometry by construction,
    and whose checkpoints are always loaded with `weights_only=True`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", OneLineErrorParser)
        bound_yaml_loader()
        super().__init__(*args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """Check `--ckpt_path` up front (one-line errors), but keep the config the user gave.

        LightningCLI would parse the checkpoint's hyper_parameters over the config *after* the command
        line, so e.g. `predict --model.sampler.alpha 3 --ckpt_path X` would silently sample with the
        training-time sampler. The config (config.yaml saved next to the checkpoint) is the source of truth.
        """
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        # "last" / "best" / "hpc" / "registry..." are resolved by the Trainer, which loads through SafeCheckpointIO.
        if ckpt_path and str(ckpt_path) not in ("last", "best", "hpc") and not str(ckpt_path).startswith("registry"):
            load_checkpoint_safely(ckpt_path)

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own IO plugin
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        trainer.callbacks.extend(sigterm_callbacks(trainer))  # stop promptly, keep a checkpoint (preemption.py)
        drop_monitors_without_logger(trainer)
        return trainer

    def instantiate_classes(self) -> None:
        """As LightningCLI, then record net and sde as class_path / init_args in the model's hyper-parameters,
        so every checkpoint of this run loads with `ScoreModule.load_from_checkpoint(path)` alone."""
        super().instantiate_classes()
        model_cfg = self.config_dump.get("model", {})
        self.model.set_class_specs(model_cfg.get("net"), model_cfg.get("sde"))

    def add_arguments_to_parser(self, parser) -> None:
        # One place for the image geometry: the data's values are the model's.
        parser.link_arguments("data.images.size", "model.image_size")
        parser.link_arguments("data.images.num_channels", "model.num_channels")
        parser.link_arguments("data.images.centered", "model.centered")
        sampler = next((action for action in parser._actions if action.dest == "model.sampler"), None)
        if sampler is not None:
            sampler.__class__ = _switch_action(type(sampler))


def drop_monitors_without_logger(trainer) -> None:
    """Drop LearningRateMonitor, with a warning, when the run has no logger (`--trainer.logger false` with a
    config that names one): it has nothing to write to, and Lightning would stop the fit at its start."""
    if trainer.loggers or not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
        return
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
    if trainer.is_global_zero:
        warnings.warn("LearningRateMonitor dropped: the run has no logger (--trainer.logger false) for it to write "
                      "to; give a logger to keep it", stacklevel=2)


class SwitchStartsFromDefaults:
    """Mixed into the `--model.sampler` action: a value naming another class than the one configured so far
    starts from that class's defaults, as LightningCLI users expect. jsonargparse keeps the old init_args that
    the new class also takes: PC's `pds` and `name` went over to EDMHeun (which then refused the PDS, or was
    recorded under the PC's name)."""

    def __call__(self, *args: Any, **kwargs: Any):
        if len(args) == 4:
            _, cfg, value, option = args
            before = cfg.get(self.dest)
            new = named_class(value) if option in self.option_strings else None
            if new is not None and isinstance(getattr(before, "class_path", None), str) and \
                    not same_class(new, before.class_path):
                cfg[self.dest] = None  # no previous value: jsonargparse starts from the class's defaults
        return super().__call__(*args, **kwargs)


@functools.cache
def _switch_action(action_type: type) -> type:
    return type(f"SwitchStartsFromDefaults{action_type.__name__}", (SwitchStartsFromDefaults, action_type), {})


def named_class(value: Any) -> str | None:
    """The class path (or bare class name) a `--model.sampler VALUE` names: a class path, or a mapping with
    'class_path' inline or in a YAML file; None for anything else (null, init_args alone)."""
    if isinstance(value, str) and os.path.isfile(value):
        value = load_file(value)
    elif isinstance(value, str) and value.lstrip().startswith("{"):
        check_text(value, "given inline")
        value = yaml.safe_load(value)
    if isinstance(value, dict):
        value = value.get("class_path")
    return value if isinstance(value, str) and value not in ("null", "None", "") else None


def same_class(a: str, b: str) -> bool:
    """Two spellings of one class ('pds_lightning.sampling.PC', 'pds_lightning.sampling.pc.PC', or 'PC')."""
    if "." not in a or "." not in b:
        return a.rpartition(".")[2] == b.rpartition(".")[2]
    try:
        return import_class(a) is import_class(b)  # the user's own command line: any class may be imported
    except ValueError:
        return a == b


def cli_main(args: list[str] | None = None, run: bool = True) -> PDSLightningCLI:
    return PDSLightningCLI(
        ScoreModule,
        ImageDataModule,
        save_config_callback=RunConfigCallback,
        args=args,
        run=run,
    )


def with_shipped_configs(argv: list[str]) -> list[str]:
    """`--config NAME` / `-c NAME` -> the shipped config's path, where NAME is shipped and no such file exists."""
    out, names = list(argv), None
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag not in ("--config", "-c"):
            continue
        index, value = (i, value) if eq else (i + 1, out[i + 1] if i + 1 < len(out) else None)
        if value is None or os.path.exists(value):
            continue
        names = shipped_configs() if names is None else names
        if value.removesuffix(".yaml") in names:
            path = str(config_path(value))
            out[index] = f"{flag}={path}" if eq else path
    return out


def check_config_files(argv: list[str]) -> None:
    """Refuse a `--config` (or any option value naming a .yaml / .yml file, which jsonargparse reads as a nested
    config, e.g. `--data data.yaml`) that is not YAML or whose aliases expand without bound (yamlfile), and any
    other option value whose YAML expands without bound (`--model '{...}'`), before jsonargparse reads it:
    jsonargparse copies the loaded data node by node, so an alias bomb of a few hundred bytes would take minutes
    and gigabytes there (ConfigFileError, a ValueError: one line). The parser's own loader is bounded too
    (`bound_yaml_loader`: config files named inside configs, the Python API)."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if not flag.startswith("-"):
            continue
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if value is None:
            continue
        if os.path.isfile(value) and (flag in ("--config", "-c") or value.endswith((".yaml", ".yml"))):
            check_file(value)
        elif flag in ("--config", "-c"):  # jsonargparse also takes the YAML itself as the value
            check_text(value, "given inline")
        else:  # jsonargparse parses any value as YAML
            check_value(value, value_name(value))


def check_flat_samplers(argv: list[str]) -> None:
    """Refuse a config whose sampler (`model.sampler`, SamplingCallback `samplers`) is the flat dict of older
    versions (predictor: euler_maruyama, n_steps: 12, ...) with one line giving its component form
    (legacy.flat_config_error), and the previous round's step name (`pc_steps` / `levels`, in a config or a flag)
    with one line naming `steps`; jsonargparse would answer with a multi-line error about union types instead.
    Checkpoints keep loading both (legacy.py)."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag.startswith("--") and old_step_name(flag):
            raise ValueError(old_step_name_error(old_step_name(flag), flag))
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if flag not in ("--config", "-c") or value is None or not os.path.isfile(value):
            continue
        for where, sampler in config_samplers(load_file(value)):
            if is_flat(sampler):
                raise ValueError(flat_config_error(sampler, f"{where} in {value}"))
            if old_step_name(sampler):
                raise ValueError(old_step_name_error(old_step_name(sampler), f"{where} in {value}"))


def with_grouped_data_flags(argv: list[str]) -> list[str]:
    """`argv` with each old flat data option (`--data.seeds 0-9`, `--data.task.init_args.source x`; OLD_DATA_KEYS)
    spelled with its group's key (`--data.predict.seeds 0-9`), with one warning naming the new keys; an old option
    and its new one with different values are refused in one line (`data.settings.grouped_data`)."""
    out, old, given = list(argv), [], {}
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        key, _, rest = flag.removeprefix("--data.").partition(".")
        if not flag.startswith("--data.") or (key not in OLD_DATA_KEYS and key not in GROUPS):
            continue
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if key in GROUPS:
            given.setdefault(key, {})[rest] = value
            continue
        old.append(key)
        out[i] = f"--data.{OLD_DATA_KEYS[key]}{'.' + rest if rest else ''}{eq}{value if eq else ''}"
        if not rest:
            given[key] = value
    if old:
        grouped_data(given, "the command line", warn=False)  # refuses an old option contradicting its new one
        warnings.warn(old_data_keys_warning(list(dict.fromkeys(old)), "the command line"), UserWarning, stacklevel=2)
    return out


def config_samplers(config) -> list[tuple[str, object]]:
    """(where, value) of each sampler a config holds: `model.sampler` and the `samplers` of trainer callbacks,
    at the top or under a subcommand's key."""
    sections = [config] + [v for v in config.values() if isinstance(v, dict)] if isinstance(config, dict) else []
    found = []
    for section in sections:
        model, trainer = section.get("model"), section.get("trainer")
        if isinstance(model, dict) and model.get("sampler") is not None:
            found.append(("model.sampler", model["sampler"]))
        callbacks = trainer.get("callbacks") if isinstance(trainer, dict) else None
        for i, callback in enumerate(callbacks if isinstance(callbacks, list) else []):
            args = callback.get("init_args") if isinstance(callback, dict) else None
            samplers = args.get("samplers") if isinstance(args, dict) else None
            found += [(f"trainer.callbacks[{i}].init_args.samplers[{j}]", s)
                      for j, s in enumerate(samplers if isinstance(samplers, list) else [])]
    return found


def main(argv: list[str] | None = None) -> None:
    """Run a command; errors the user can fix end the process with one line on stderr and exit status 1."""
    try:
        _main(argv)
    except SIGTERMException as stop:  # a SystemExit with status 0 in Lightning: a scheduler would see success
        saved = getattr(stop, "checkpoint", None)
        resume = (f"step {stop.global_step} saved to {saved}; rerun with --ckpt_path last (or that file) to resume"
                  if saved else "complete outputs are kept; rerun the same command to finish")
        print(f"pds-lightning: stopped by SIGTERM: {resume}", file=sys.stderr)
        sys.exit(EXIT_STATUS)
    except (ValueError, OSError, RuntimeError) as err:
        if os.environ.get(TRACEBACK_ENV) == "1" or not _user_error(err):
            raise
        print(f"pds-lightning: error: {error_line(err)} (set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


def _user_error(err: BaseException) -> bool:
    """ValueError / OSError are the package's bad-input errors; of RuntimeErrors only its own named ones."""
    from pds_lightning.writer import SampleWriteError
    from pds_lightning.sampling import NonFiniteSampleError
    from pds_lightning.module import NonFiniteLossError

    return isinstance(err, (ValueError, OSError, NonFiniteSampleError, NonFiniteLossError, SampleWriteError))


def _main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        sys.exit(module.main(argv[1:]))
    if argv and argv[0] in ALIASES:
        argv = [ALIASES[argv[0]][0]] + argv[1:]
        if from_command_line:
            sys.argv = sys.argv[:1] + argv
    if argv and argv[0] in ("-h", "--help"):
        extra = "\n".join(f"  {name:<20} {help}" for name, (_, help) in {**EXTRA_COMMANDS, **ALIASES}.items())
        print(f"pds-lightning extra commands:\n{extra}\n")
    argv = with_shipped_configs(argv)
    check_config_files(argv)
    check_flat_samplers(argv)
    argv = with_grouped_data_flags(argv)
    if from_command_line:  # LightningCLI reads sys.argv itself; passing args too triggers its "args and argv" warning
        sys.argv[1:] = argv
    cli_main(None if from_command_line else argv)
    close_process_group()


def close_process_group() -> None:
    """After a successful run on every rank: wait for all ranks, then destroy the process group.

    Why: Lightning destroys the default process group at exit only for NCCL. With gloo, native threads were
    still running when the interpreter shut down (seen at atexit: two `pt_gloo_runloop` workers and
    `gloo_tcp_loop` on every rank, plus rank 0's rendezvous store server `pt_tcpstore_uv`), and the C++
    objects that own them were torn down during finalization; in some runs that ends in `terminate called
    without an active exception` and exit status 134 although every sample was written (the mechanism that
    pytorch/pytorch PR 179291 describes for gloo at interpreter finalization).
    After this call only Python's own threads remain. The barrier keeps rank 0, which hosts the store, until
    every rank is done. Skipped after an error: a barrier would wait for ranks that may never arrive.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
