"""The `retain` command line: run, compare, report, generate, methods."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from accelerate import PartialState
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from transformers import HfArgumentParser
from transformers.integrations import get_available_reporting_integrations
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
from transformers.utils import logging as hf_logging

from retain import __version__, export, recipes
from retain.arguments import ContinualTrainingArguments
from retain.bench import conflicting_rules, task_suite, temporal_facts
from retain.importers import write_imported
from retain.importers.casm import import_casm
from retain.importers.temporalwiki import import_temporalwiki
from retain.methods import METHODS, ConfigError, MethodError, method_options
from retain.models import EMBEDDED_DEFAULT, ModelLoadError
from retain.report import baseline_of, load_results, summary_rows, write_report
from retain.result import RunResult
from retain.runstate import RunDirectoryError, RunLock, check_no_symlink, read_run_config, upgrade_checkpoint
from retain.stream import StreamError, check_stream_output, read_yaml, save_stream


class OptionError(ValueError):
    """A command-line option retain does not know or cannot use; the message names it."""


_CHECKPOINTS = "retain checkpoints after every task into --output (the newest two kept) and resumes with --resume"
_EVALUATION = "retain scores every task's probes after each task; the Trainer's own evaluation loop is not used"
# TrainingArguments that retain does not honour, refused (with why) before anything is loaded.
REFUSED: dict[str, str] = {
    "output_dir": "the Trainer's files go to OUTPUT/trainer; use --output",
    "resume_from_checkpoint": "use --resume: " + _CHECKPOINTS,
    **dict.fromkeys(("save_strategy", "save_steps", "save_total_limit", "save_only_model", "save_on_each_node",
                     "enable_jit_checkpoint", "ignore_data_skip", "restore_callback_states_from_checkpoint"), _CHECKPOINTS),
    **dict.fromkeys(("push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
                     "hub_revision"), "retain does not push runs to the Hub; export the trained model and push that: "
                                      "retain export RUN --output DIR --push-to-hub REPO"),
    **dict.fromkeys(("eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "load_best_model_at_end",
                     "metric_for_best_model", "greater_is_better", "prediction_loss_only", "eval_accumulation_steps",
                     "batch_eval_metrics", "eval_do_concat_batches", "eval_use_gather_object", "include_for_metrics",
                     "do_eval", "do_predict"), _EVALUATION),
    "do_train": "retain always trains every task of the stream",
}
# --report_to names whose package has another name on PyPI.
_TRACKER_PACKAGES = {"comet_ml": "comet-ml", "azure_ml": "azureml-core", "flyte": "flytekit"}


USER_ERRORS = (StreamError, ModelLoadError, RunDirectoryError, MethodError, OptionError)


@dataclass
class RunArguments:
    _argument_group_name = "retain run"  # its own group in --help, listed before the TrainingArguments
    stream: str | None = field(default=None, metadata={"help": "Stream directory holding stream.yaml (required)."})
    output: str | None = field(default=None, metadata={"help": "Run directory for results and checkpoints (required)."})
    method: str = field(default="full_ft", metadata={"help": f"One of: {', '.join(sorted(METHODS))}; or several "
                                                             "joined by '+' (e.g. replay+ewc)."})
    model: str = field(
        default=EMBEDDED_DEFAULT, metadata={"help": f"'{EMBEDDED_DEFAULT}' (embedded), 'tiny', a HF id or a path."}
    )
    method_arg: list[str] = field(
        default_factory=list, metadata={"help": "Method options as k=v (see `retain methods`).", "nargs": "*"}
    )
    config: str | None = field(default=None, metadata={"help": "YAML file of any of these options; flags override it."})
    resume: bool = field(default=False, metadata={"help": "Continue the run in --output from its last checkpoint, with "
                                                          "the options it was started with (any given must match)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run in --output."})


@dataclass
class CompareArguments:
    _argument_group_name = "retain compare"
    stream: str | None = field(default=None, metadata={"help": "Stream directory holding stream.yaml (required)."})
    output: str | None = field(default=None, metadata={"help": "Comparison directory: one run directory per method (required)."})
    methods: str = field(default="full_ft,lora,ewc,replay", metadata={
        "help": "Comma-separated methods, run in this order; NAME=METHOD runs a variant under its own name "
                "(e.g. aria_no_spc=aria with --method-arg aria_no_spc.spc_lambda=0)."})
    model: str = field(default=EMBEDDED_DEFAULT, metadata={"help": "The model every method starts from."})
    method_arg: list[str] = field(
        default_factory=list, metadata={"help": "Method options as method.key=value, e.g. lora.r=8.", "nargs": "*"}
    )
    method_lr: list[str] = field(
        default_factory=list, metadata={"help": "Per-method learning rate as method=lr, e.g. lora=1e-3.", "nargs": "*"}
    )
    config: str | None = field(default=None, metadata={"help": "YAML file of any of these options; flags override it."})
    baseline: str | None = field(default=None, metadata={"help": "The method whose cost the report measures the others "
                                                                "against (default: full_ft if it runs, else the first)."})
    overwrite: bool = field(default=False, metadata={"help": "Rerun methods whose run directories already exist."})


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are one line (no usage dump), as every other error of retain's is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HfParser(HfArgumentParser):
    """HfArgumentParser whose errors are OptionErrors: `retain run` / `compare` report them in one line, as any other."""

    def error(self, message: str) -> NoReturn:
        raise OptionError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand but `run` and `compare`, whose options (TrainingArguments too) `_parse_arguments`
    reads."""
    parser = _Parser(
        prog="retain",
        description="Continual fine-tuning of causal LMs: teach a stream of tasks, measure what is kept.",
        epilog="`retain run --help` lists every option, including all of transformers' TrainingArguments.",
    )
    parser.add_argument("--version", action="version", version=f"retain {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("run", help="train one method through a stream and measure every task after each", add_help=False)
    commands.add_parser("compare", help="run several methods on one stream, model and seed, then write the report", add_help=False)
    report = commands.add_parser("report", help="rebuild report.md, report.html and the plots of a comparison")
    report.add_argument("directory", help="the --output directory of `retain compare`")
    report.add_argument("--baseline", help="the method whose cost the others are measured against (default: the "
                                           "comparison's --baseline, else full_ft, else the first method)")
    generate = commands.add_parser("generate", help="write a benchmark stream")
    kinds = generate.add_subparsers(dest="kind", metavar="KIND", required=True)
    facts = kinds.add_parser("temporal-facts", help="fictional facts that change over periods")
    facts.add_argument("--output", required=True, help="directory to write the stream to")
    facts.add_argument("--preset", default="small", choices=sorted(temporal_facts.PRESETS))
    facts.add_argument("--facts", type=int, help="facts alive in the first period")
    facts.add_argument("--periods", type=lambda text: tuple(p.strip() for p in text.split(",")), help="e.g. 2018,2020,2022")
    facts.add_argument("--change-rate", type=float, help="share of live facts that change at each later period")
    facts.add_argument("--new-rate", type=float, help="new facts per later period, as a share of the first period's")
    facts.add_argument("--paraphrases", type=int, help="training sentences per new or changed fact (1-3)")
    facts.add_argument("--qa", action=argparse.BooleanOptionalAction, help="also train on question/answer pairs")
    facts.add_argument("--passages", action=argparse.BooleanOptionalAction, help="train on stated sentences")
    facts.add_argument("--year-in-text", action=argparse.BooleanOptionalAction, help="prefix training text with [period]")
    facts.add_argument("--probe-templates", type=int, help="probe templates per fact and period from the dev/test family "
                                                            "(half each; default 0: the fixed forms cloze, question, …)")
    facts.add_argument("--seed", type=int)
    suite = kinds.add_parser("task-suite", help="four instruction tasks over one invented vocabulary")
    suite.add_argument("--output", required=True, help="directory to write the stream to")
    suite.add_argument("--train-examples", type=int, default=48)
    suite.add_argument("--probes", type=int, default=16)
    suite.add_argument("--seed", type=int, default=0)
    conflicting = kinds.add_parser("conflicting-rules", help="yes/no tasks whose rules contradict on the same inputs")
    conflicting.add_argument("--output", required=True, help="directory to write the stream to")
    conflicting.add_argument("--tasks", type=int, default=3)
    conflicting.add_argument("--train-examples", type=int, default=48)
    conflicting.add_argument("--probes", type=int, default=24)
    conflicting.add_argument("--named", action=argparse.BooleanOptionalAction, default=True,
                             help="name the rule in the prompt (--no-named: only the items' content tells the task)")
    conflicting.add_argument("--seed", type=int, default=0)
    ask = commands.add_parser("ask", help="complete prompts with the model of a trained run (its last checkpoint)")
    ask.add_argument("--run", required=True, help="a run directory of `retain run` or one method's of `retain compare`")
    ask.add_argument("--max-new-tokens", type=int, default=24)
    ask.add_argument("--as-of", default=None, help="ask as of this time (e.g. 2018): prompts naming no time get a "
                                                   "\"[2018] \" prefix, the form the temporal streams use")
    ask.add_argument("--conversation", action="store_true",
                     help="the prompts are the turns of one conversation: a follow-up (\"And now?\") asks about the "
                          "fact the turns before it were on")
    ask.add_argument("prompts", nargs="+", help="prompts to complete, e.g. \"[2018] The harbour master of Velmora Port is\"")
    out = commands.add_parser("export", help="write a run's model to a folder that transformers / PEFT load, with a model card")
    out.add_argument("run", help="a run directory of `retain run` or one method's of `retain compare`")
    out.add_argument("--output", required=True, help="the folder to write (new or empty, or an earlier export with --overwrite)")
    out.add_argument("--format", choices=export.FORMATS, default=None,
                     help="merged (a plain model), adapter (PEFT; lora), retain (the layers of smf / casm / aria and "
                          "their routing, loaded with trust_remote_code); default: the run's own")
    out.add_argument("--as-of", default=None, help="casm: export only this period's memory version, read by every input "
                     "(default: every version, each query reading its own)")
    out.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    out.add_argument("--push-to-hub", metavar="REPO", default=None, help="then upload the folder to this Hub repository")
    importer = commands.add_parser("import", help="turn a public temporal dataset on disk into a stream")
    sources = importer.add_subparsers(dest="source", metavar="SOURCE", required=True)
    casm = sources.add_parser("casm", help="the CASM repository's Synthetic TemporalWiki (its data/ folder)")
    casm.add_argument("directory", help="the folder holding synthetic_facts_raw.json, probes.json, passages.json")
    casm.add_argument("--output", required=True, help="new directory to write the stream to")
    casm.add_argument("--facts", type=int, help="keep the first N facts (and their passages and probes)")
    casm.add_argument("--passages", default="augmented", choices=["augmented", "template", "both"],
                      help="train on the augmented passages (default), the one-sentence templates, or both")
    casm.add_argument("--probe-templates", type=int, default=0,
                      help="probe each fact in N templates of the dev/test family (half each) instead of the question "
                           "and time-clause forms, and in N about now in the last period")
    twiki = sources.add_parser("temporalwiki", help="TemporalWiki's 2021 monthly diff sets and probe triples")
    twiki.add_argument("--diffsets", required=True, help="the TWiki_Diffsets folder (aug_sep.csv … nov_dec.csv)")
    twiki.add_argument("--probes", required=True, help="the twiki_probes folder (<months>_changed/unchanged.csv)")
    twiki.add_argument("--output", required=True, help="new directory to write the stream to")
    twiki.add_argument("--per-period", type=int, help="a seeded sample of N changed facts per month")
    twiki.add_argument("--seed", type=int, default=0)
    upgrade = commands.add_parser("upgrade-run", help="convert a trusted run directory of an older retain (pickled "
                                                      "checkpoints) to safetensors + JSON")
    upgrade.add_argument("directory", help="a run directory of `retain run`, or one method's of `retain compare`")
    commands.add_parser("methods", help="list the methods and their --method-arg options")
    return parser


def main(argv: list[str] | None = None) -> int:
    # The Trainer's every train() call runs gc.collect(); the imported libraries' objects, which live as long as the
    # process, would be traversed each time (a quarter of a small run's time). Frozen, the collector skips them.
    gc.freeze()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("run", "compare"):
        return (_run if argv[0] == "run" else _compare)(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "methods":
            _print_methods()
        elif args.command == "report":
            paths = write_report(args.directory, args.baseline)
            print(f"Wrote {paths['html']} and {paths['md']}")
        elif args.command == "generate":
            _generate(args)
        elif args.command == "import":
            _import(args)
        elif args.command == "upgrade-run":
            _upgrade(Path(args.directory))
        elif args.command == "export":
            _export(args)
        elif args.command == "ask":
            answers = recipes.ask(args.run, args.prompts, args.max_new_tokens, args.as_of, args.conversation)
            for prompt, answer in zip(args.prompts, answers):
                print(f"{prompt} → {answer}")
    except (ValueError, FileNotFoundError, *USER_ERRORS) as error:
        print(f"retain {args.command}: error: {_message(error)}", file=sys.stderr)
        return 2
    return 0


def _message(error: Exception) -> str:
    """An error as the command line says it: a config's bad option is the `--method-arg` that set it."""
    return f"--method-arg {error.option}: {error.reason}" if isinstance(error, ConfigError) else str(error)


def _generate(args: argparse.Namespace) -> None:
    check_stream_output(Path(args.output))
    if args.kind == "temporal-facts":
        options = {k: v for k, v in vars(args).items() if k not in ("command", "kind", "output", "preset")}
        stream = temporal_facts.generate(temporal_facts.config_from_options(args.preset, **options))
    elif args.kind == "conflicting-rules":
        stream = conflicting_rules.generate(conflicting_rules.ConflictingRulesConfig(
            tasks=args.tasks, train_examples=args.train_examples, probes=args.probes, named=args.named, seed=args.seed))
    else:
        config = task_suite.TaskSuiteConfig(train_examples=args.train_examples, probes=args.probes, seed=args.seed)
        stream = task_suite.generate(config)
    save_stream(stream, args.output)
    sizes = ", ".join(f"{t.name}: {len(t.train)} examples / {len(t.probes)} probes" for t in stream.tasks)
    print(f"Wrote {args.output} ({sizes})")


def _export(args: argparse.Namespace) -> None:
    if args.push_to_hub:
        export.check_push(args.push_to_hub, Path(args.output))
    folder = export.export(args.run, args.output, args.format, args.as_of, args.overwrite)
    print(f"Exported {args.run} to {folder}")
    if args.push_to_hub:
        print(f"Uploaded to {export.push_to_hub(folder, args.push_to_hub)}")


def _upgrade(run: Path) -> None:
    method = read_run_config(run)["method"]
    check_no_symlink(run)
    RunLock.of(run)  # a writer: no run may be going on in it
    old = sorted(p for p in (run / "checkpoints").glob("task-*") if (p / "method.pt").is_file())
    for checkpoint in old:
        upgrade_checkpoint(checkpoint, method)
        print(f"Converted {checkpoint}")
    print(f"{run}: {len(old)} checkpoint(s) converted" if old else f"{run}: nothing to convert")


def _import(args: argparse.Namespace) -> None:
    if args.source == "casm":
        stream, report = import_casm(args.directory, facts=args.facts, passages=args.passages,
                                     templates=args.probe_templates)
    else:
        stream, report = import_temporalwiki(args.diffsets, args.probes, per_period=args.per_period, seed=args.seed)
    write_imported(stream, args.output)
    print(f"Wrote {args.output}:\n{report.text()}")


def _run(argv: list[str]) -> int:
    try:
        run_args, train_args = _parse_run_arguments(argv)
        return _execute(run_args, train_args, Console(stderr=True))
    except USER_ERRORS as error:
        print(f"retain run: error: {_message(error)}", file=sys.stderr)  # one unwrapped line: paths stay copyable
        return 2


def _compare(argv: list[str]) -> int:
    try:
        compare_args, train_args = _parse_arguments(argv, CompareArguments, "retain compare",
                                                    "Run several methods on one stream, model and seed; then report.")
        return _execute_compare(compare_args, train_args, Console(stderr=True))
    except USER_ERRORS as error:
        print(f"retain compare: error: {_message(error)}", file=sys.stderr)
        return 2


def _parse_run_arguments(argv: list[str]) -> tuple[RunArguments, ContinualTrainingArguments]:
    return _parse_arguments(argv, RunArguments, "retain run", "Train one method through a stream, evaluating every task after each.")


def _parse_arguments(argv: list[str], options: type, prog: str, description: str, saved: bool = True
                     ) -> tuple[Any, ContinualTrainingArguments]:
    """The command's options and TrainingArguments from `argv` (and --config); with --resume, the run's own options
    (config.json) are the defaults unless `saved` is False."""
    parser = _HfParser((options, ContinualTrainingArguments), prog=prog, description=description,
                              usage=f"{prog} --stream DIR --output DIR [options] (see below)",
                              epilog=f"Options refused (retain does its own checkpointing, evaluation and output): "
                                     f"{', '.join('--' + name for name in REFUSED)}.")
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config")
    early.add_argument("--output")
    early.add_argument("--resume", nargs="?", const="true")
    early.add_argument("--overwrite", nargs="?", const="true")
    given = early.parse_known_args(argv)[0]
    resume = options is RunArguments and str(given.resume).lower() in ("true", "1", "yes")
    if resume and str(given.overwrite).lower() in ("true", "1", "yes"):
        raise OptionError("--resume and --overwrite contradict each other: continue the run, or replace it")
    if saved and resume and given.output:  # the run's own options: --resume needs only --output, and options given must match
        known = {action.dest for action in parser._actions}
        parser.set_defaults(**{k: v for k, v in _saved_options(Path(given.output)).items() if k in known})
    if given.config:
        parser.set_defaults(**_read_config(Path(given.config), parser))
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ValueError as error:  # an option's value the arguments' own checks refuse, e.g. --fact_questions 9
        raise OptionError(str(error)) from None
    if unknown:
        raise OptionError(f"unknown option(s): {' '.join(unknown)} (see `{prog} --help`)")
    run_args, train_args = parsed
    for option in ("output", "stream"):
        if getattr(run_args, option) is None:
            raise OptionError(f"--{option} is required (see `{prog} --help`)")
    _check_training_arguments(train_args)
    train_args.output_dir = str(Path(run_args.output) / "trainer")
    return run_args, train_args


def _saved_options(output: Path) -> dict[str, Any]:
    """The options a run in `output` was started with (its config.json), as parser defaults."""
    config_file = output / "config.json"
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        # (Options retain refuses were their defaults; to_dict writes tokens as placeholders, which must not be read.)
        return {"stream": saved["stream"], "method": saved["method"], "model": saved["model"],
                "method_arg": [f"{key}={value}" for key, value in saved["method_args"].items()],
                **{k: v for k, v in saved["training_args"].items() if k not in REFUSED}}
    except FileNotFoundError:
        raise RunDirectoryError(f"--resume: {config_file} not found; nothing to resume") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunDirectoryError(f"{config_file}: damaged ({type(error).__name__}: {error})") from None


# Options whose value must be at least this (a number every value of the Trainer's must also be: finite).
LEAST = {"learning_rate": 0, "num_train_epochs": 0, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
         "gradient_accumulation_steps": 1, "max_length": 1, "max_new_tokens": 1, "weight_decay": 0, "warmup_steps": 0,
         "warmup_ratio": 0, "max_grad_norm": 0, "seed": 0, "data_seed": 0}
SEEDS = 2**32  # numpy's and the Trainer's seeds are 32-bit


def _check_training_arguments(args: ContinualTrainingArguments) -> None:
    """Refuse, before anything is loaded or written, an impossible value (not finite, below its least, a seed past
    32 bits, no epoch and no step), a TrainingArguments option retain does not honour, and a tracker (--report_to)
    that is not installed or not known."""
    for spec in dataclasses.fields(args):
        value = getattr(args, spec.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise OptionError(f"--{spec.name} {value}: must be a finite number")
            if spec.name in LEAST and value < LEAST[spec.name]:
                raise OptionError(f"--{spec.name} {value}: must be at least {LEAST[spec.name]}")
    for name in ("seed", "data_seed"):
        if (value := getattr(args, name)) is not None and value >= SEEDS:
            raise OptionError(f"--{name} {value}: must be below 2**32")
    if args.num_train_epochs == 0 and args.max_steps <= 0:
        raise OptionError("--num_train_epochs 0: trains nothing (give epochs, or --max_steps)")
    defaults = ContinualTrainingArguments()
    for name, why in REFUSED.items():
        if getattr(args, name) != getattr(defaults, name):
            raise OptionError(f"--{name}: not supported: {why}")
    known, available = set(INTEGRATION_TO_CALLBACK), set(get_available_reporting_integrations())
    for tracker in args.report_to:
        if tracker not in known:
            raise OptionError(f"--report_to {tracker}: unknown; expected some of {', '.join(sorted(known))} or none")
        if tracker not in available:
            package = _TRACKER_PACKAGES.get(tracker, tracker)
            raise OptionError(f"--report_to {tracker}: {package} is not installed (pip install {package})")


def _read_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if not path.is_file():
        raise RunDirectoryError(f"--config {path}: file not found")
    try:
        values = read_yaml(path.read_bytes().decode("utf-8"), f"--config {path}") or {}
    except UnicodeDecodeError as error:
        raise RunDirectoryError(f"--config {path}: not UTF-8 text (byte {error.start})") from None
    if not isinstance(values, dict):
        raise RunDirectoryError(f"--config {path}: expected a mapping of option: value")
    actions = {action.dest: action for action in parser._actions}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise RunDirectoryError(f"--config {path}: unknown option {', '.join(unknown)} (see `retain run --help`)")
    for key, value in values.items():  # the types the command line would check, checked here
        action = actions[key]
        many = action.nargs in ("*", "+")
        if isinstance(value, dict) or isinstance(value, list) and not many:
            raise RunDirectoryError(f"--config {path}: {key}: expected one value, got {value!r}")
        for item in value if isinstance(value, list) else [value]:
            if action.type in (int, float) and (isinstance(item, bool) or not _converts(action.type, item)):
                raise RunDirectoryError(f"--config {path}: {key}: expected {action.type.__name__}, got {item!r}")
    return values


def _converts(kind: type, value: Any) -> bool:
    try:
        kind(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _parse_method_args(pairs: list[str]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MethodError(f"--method-arg {pair!r}: expected key=value")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def _setup_logging(console: Console) -> None:
    # retain's own messages on this command's console (replacing an earlier command's, when main() runs twice in one
    # process); they still reach the root logger's handlers, if an application set any.
    logger = logging.getLogger("retain")
    logger.handlers = [RichHandler(console=console, show_path=False)]
    logger.setLevel(logging.INFO)
    hf_logging.set_verbosity_warning()


def _execute(run_args: RunArguments, train_args: ContinualTrainingArguments, console: Console) -> int:
    _setup_logging(console)
    result = recipes.run(run_args.stream, run_args.output, run_args.method, _parse_method_args(run_args.method_arg),
                         run_args.model, train_args, run_args.resume, run_args.overwrite)
    if PartialState().is_main_process:  # one report of a distributed run, not one per process
        _wide_console().print(summary_table(result))
        console.print(f"Results in [bold]{run_args.output}[/] (result.json, predictions.jsonl)")
    return 0


def _execute_compare(args: CompareArguments, train_args: ContinualTrainingArguments, console: Console) -> int:
    _setup_logging(console)
    per_method: dict[str, dict[str, str]] = {}
    for key, value in _parse_method_args(args.method_arg).items():
        method, dot, option = key.partition(".")
        if not dot:
            raise MethodError(f"--method-arg {key}={value}: expected METHOD.option=value")
        per_method.setdefault(method, {})[option] = value
    learning_rates = {}
    for pair in args.method_lr:
        method, _, value = pair.partition("=")
        try:
            learning_rates[method] = float(value)
        except ValueError:
            raise MethodError(f"--method-lr {pair}: {value!r} is not a number") from None
    methods = [m for m in args.methods.split(",") if m.strip()]
    try:
        paths = recipes.compare(args.stream, args.output, methods, per_method, learning_rates, args.model, train_args,
                                args.overwrite, args.baseline)
    except ConfigError as error:
        method = next((m for m, options in per_method.items() if error.option in options), None)
        raise ConfigError(error.owner, f"{method}.{error.option}" if method else error.option, error.reason) from None
    if PartialState().is_main_process:
        _wide_console().print(comparison_table(Path(args.output)))
        console.print(f"Report: [bold]{paths['html']}[/] (and report.md, PNGs, one run directory per method)")
    return 0


def _wide_console() -> Console:
    """Tables stay readable when output goes to a pipe or log, where rich would assume 80 columns."""
    return Console(width=max(Console().width, 130))


def comparison_table(directory: Path) -> Table:
    results = load_results(directory)
    headers, rows = summary_rows(results, baseline_of(directory, results))
    table = Table(title="Comparison (exact match)", title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    return table


def summary_table(result: RunResult) -> Table:
    """The EM matrix (rows: after each task) and the run's summary metrics."""
    table = Table(title=f"{result.method} on {result.model}: exact match after each task", title_justify="left")
    table.add_column("after \\ on", style="bold")
    for name in result.tasks:
        table.add_column(name, justify="right")
    table.add_column("general ppl", justify="right")
    for row in result.rows:
        cells = ["–" if v is None else f"{v:.2f}" for v in row.em]
        ppl = "–" if row.general_ppl is None else f"{row.general_ppl:.1f}"
        table.add_row(row.label, *cells, ppl)
    summary = result.summary("em")

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:+.3f}" if value < 0 else f"{value:.3f}"

    seconds = sum(t["train_seconds"] for t in result.timings)
    table.caption = (
        f"ACC {fmt(summary.get('acc'))}   BWT {fmt(summary.get('bwt'))}   FWT {fmt(summary.get('fwt'))}   "
        f"forgetting {fmt(summary.get('forgetting'))}   training {seconds:.0f} s"
    )
    return table


def _print_methods() -> None:
    console = Console()
    for name in sorted(METHODS):
        summary = (sys.modules[METHODS[name].__module__].__doc__ or "").strip().splitlines()[0]
        table = Table(title=f"[bold]{name}[/]: {summary}", title_justify="left")
        table.add_column("--method-arg")
        table.add_column("default")
        table.add_column("meaning")
        for option, default, help_text in method_options(name):
            table.add_row(option, repr(default), help_text)
        console.print(table if table.row_count else table.title)


if __name__ == "__main__":
    sys.exit(main())
