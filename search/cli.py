"""The `search` command. Heavy imports (torch, open_clip, faiss) happen inside commands only."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer

from .library import LIBRARY_ENV, resolve_library_dir
from .output import json_bytes, name_bytes, one_line, shown

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search your own pictures with CLIP: index folders, then query by text or picture.")

LibraryOption = Annotated[str | None, typer.Option(
    "--library", help=f"Library folder (default: ${LIBRARY_ENV}, else the per-user data folder).")]
DatabaseOption = Annotated[str | None, typer.Option(
    "--database", help="PostgreSQL URL of the database holding the library's rows, e.g. postgresql://me@host/photos "
    "(default: $SEARCH_DATABASE_URL, else the library folder's own SQLite file). The FAISS file and previews stay "
    "in the library folder.", show_default=False)]
ModelOption = Annotated[str | None, typer.Option("--model", help="open_clip architecture, e.g. ViT-B-32.")]
PretrainedOption = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip pretrained tag, hf-hub:ORG/REPO, or 'none' for random weights.")]
CheckpointOption = Annotated[str | None, typer.Option(
    "--checkpoint", help="Model folder written by `search train`, or a weights file (with --model).")]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {one_line(message)}", err=True)  # a name with a newline or escape codes stays one line
    return typer.Exit(code)


def echo_json(value) -> None:
    """One JSON object on standard output: UTF-8 under any locale, names that are not UTF-8 kept exactly."""
    typer.echo(json_bytes(value))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


# Failures with a message meant for the user. Looked up among the modules already loaded, so
# that handling them never imports what the command did not need (torch takes seconds): an
# exception of a module that was never imported cannot have been raised.
KNOWN_ERRORS = (("encoders.spec", "ModelError"), ("indexer.errors", "LibraryError"), ("search.terms", "TermError"),
                ("search.filters", "FilterError"), ("encoders.files", "InputFileError"))


def _known_errors() -> tuple[type, ...]:
    found = (getattr(sys.modules.get(module), name, None) for module, name in KNOWN_ERRORS)
    return tuple(cls for cls in found if isinstance(cls, type))


def clean_errors(command: Callable) -> Callable:
    """Known failures become one line on stderr and exit code 2; Ctrl-C exits 130."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _show_warning
        try:
            return command(*args, **kwargs)
        except Exception as e:
            if isinstance(e, _known_errors()):
                raise fail(str(e)) from None
            raise
        except KeyboardInterrupt:
            typer.echo("\ninterrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


ExcludeOption = Annotated[list[str] | None, typer.Option("--exclude", help="Glob of names or paths to skip.")]
HiddenOption = Annotated[bool, typer.Option("--include-hidden", help="Index hidden files and folders.")]
BatchOption = Annotated[int | None, typer.Option("--batch-size", min=1, help="Pictures per model batch "
                                                 "(default: 32 on CPU, 128 on CUDA).")]
WorkersOption = Annotated[int | None, typer.Option("--workers", min=0, help="Decoding processes (default: one per "
                                                   "core; 0 = threads in this process).")]


def finite(value: float | None) -> float | None:
    """An option's number must be one (click's ranges let nan and inf through)."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number of seconds")
    return value


TimeoutOption = Annotated[float, typer.Option("--decode-timeout", min=1, callback=finite, help="Seconds one file may "
                                              "take to decode before it is skipped as timed out.")]
WaitOption = Annotated[float, typer.Option("--wait", min=0, callback=finite, help="Seconds to wait for another "
                                           "`search index` on this library to finish, instead of refusing at once.")]
InferenceOption = Annotated[str | None, typer.Option(
    "--inference", show_default=False,
    help="The image tower's path: fp32-eager, cl, reparam, reparam-cl, bf16 (and combinations), onnx (exported "
         "beside the library, run without torch), or auto to measure; default: $CLIPSEARCH_INFERENCE, else the "
         "library's own, else the fastest that keeps the embeddings on this machine.")]


def _index_options(exclude, include_hidden, batch_size, workers, decode_timeout, wait):
    import indexer

    return indexer.IndexOptions(batch_size=batch_size, workers=workers, decode_timeout=decode_timeout,
                                lock_wait=wait, scan=indexer.ScanOptions(excludes=tuple(exclude or ()),
                                                                         include_hidden=include_hidden))


def _model_spec(model, pretrained, checkpoint):
    from encoders import ModelSpec

    return ModelSpec.from_options(model, pretrained, checkpoint)


class _ImageTower:
    """The image tower of one run on its inference path: forced, else the library's ``recorded`` one, else chosen
    for this machine; loaded when called (with how many pictures are to be embedded). ``lib``: the library `search
    index` fills, where the tower may be exported to ONNX; one filled on that path, with its export in place, embeds
    without loading torch or the model. ``model``: the PyTorch model, once this run has loaded it."""

    def __init__(self, spec, recorded: str | None, inference: str | None, lib=None):
        from encoders.inference_path import check_forced_name
        from encoders.spec import INFERENCE_ENV

        self.spec, self.recorded, self.inference, self.lib = spec, recorded, inference, lib
        self.forced = inference or os.environ.get(INFERENCE_ENV) or None
        check_forced_name(self.forced, exports=lib is not None)  # a typo is refused before the model loads
        self.model = None

    def __call__(self, pictures: int | None = None):
        from encoders.onnx.image import ONNX, OnnxImageEncoder

        lib, forced = self.lib, self.forced
        if lib is not None and lib.exists() and self.recorded == ONNX and forced in (None, ONNX):
            exported = OnnxImageEncoder.for_library(lib.folder, lib.model_fingerprint(), pictures)
            if exported is not None:
                return exported
        from encoders import load_encoder
        from encoders.inference import image_encoder

        self.model = load_encoder(self.spec)
        return image_encoder(self.model, self.recorded, self.inference, lib.folder if lib is not None else None)


def _export_text_tower(towers) -> None:
    """Export the text tower beside the library (once), saying so, or why texts stay on PyTorch. For a run that
    has the PyTorch model loaded anyway: the library's next text query then imports no torch."""
    towers.export()
    if towers.exported:
        typer.echo("note: text queries on this library will now start faster (text model exported to ONNX)", err=True)
    elif towers.refusal:
        typer.echo(f"note: text queries on this library run in PyTorch: {towers.refusal}", err=True)


def _export_text_tower_of(folder: Path, model) -> None:
    from .text_tower import TextTowers

    _export_text_tower(TextTowers(folder, model.fingerprint.id, True, lambda: model))


@app.command()
@clean_errors
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders (or files) to index.", show_default=False)],
    library: LibraryOption = None,
    database: DatabaseOption = None,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    exclude: ExcludeOption = None,
    include_hidden: HiddenOption = False,
    batch_size: BatchOption = None,
    workers: WorkersOption = None,
    decode_timeout: TimeoutOption = 60.0,
    wait: WaitOption = 0.0,
    inference: InferenceOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Embed every picture under PATHS into the library (incremental: only what changed)."""
    import indexer

    folder = resolve_library_dir(library)
    lib = indexer.Library.open(folder, create=True, database=database)
    lib.require_writable()
    own_model = lib.exists() and not (model or pretrained or checkpoint)
    # Its own model: loaded only when there is something to embed (a run that finds nothing new imports no torch).
    spec = lib.model_spec() if own_model else _model_spec(model, pretrained, checkpoint)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise indexer.MissingRoot(f"root not found: {', '.join(missing)} (is it unmounted? nothing was changed)")
    if not lib.exists() and not (model or pretrained or checkpoint):
        _say_default_model()
    tower = _ImageTower(spec, lib.model.inference if lib.exists() else None, inference, lib)
    options = _index_options(exclude, include_hidden, batch_size, workers, decode_timeout, wait)
    summary = _index_with_progress_bar(lib, tower if own_model else tower(), paths, options)
    if json_output:
        echo_json({"library": str(folder), **summary.as_dict()})
    else:
        _print_index_summary(folder, summary)
    if tower.model is not None and lib.exists():  # after the summary, as a query exports after its results
        sys.stdout.flush()
        _export_text_tower_of(folder, tower.model)


def _say_default_model() -> None:
    from encoders import default_model

    chosen = default_model()
    typer.echo(f"note: a new library on {chosen.model} ({chosen.pretrained}), {chosen.why}", err=True)


def _index_with_progress_bar(lib, encoder, paths: list[Path], options):
    """``indexer.index_folders`` under a progress bar on stderr; Ctrl-C keeps what was embedded and exits 130."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import indexer

    with Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} files/s"),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("index", total=None, rate="-")

        class BarProgress(indexer.Progress):
            def start(self, total):
                bar.update(task, total=total)

            def advance(self, n=1):
                bar.advance(task, n)
                speed = bar.tasks[task].speed
                bar.update(task, rate=f"{speed:.1f}" if speed else "-")

        try:
            return indexer.index_folders(lib, encoder, paths, options, BarProgress())
        except KeyboardInterrupt:
            bar.stop()
            typer.echo("interrupted: everything embedded so far is kept; run the same command again to finish",
                       err=True)
            raise typer.Exit(130) from None


def _print_index_summary(folder: Path, s) -> None:
    rate = s.embedded / s.seconds if s.seconds else 0.0
    typer.echo(f"{s.added} added, {s.updated} updated, {s.moved} moved, {s.removed} removed, {s.failed} failed, "
               f"{s.unchanged} unchanged ({s.embedded} embedded in {s.seconds:.1f}s, {rate:.1f} pictures/s)")
    if s.unreadable_folders:
        typer.echo("\n".join(unreadable_report(s.unreadable_folders, s.pictures_kept, limit=10)))
    if s.failed:
        typer.echo(f"see the failures with: search status --failed --library {shown(str(folder))}")


def unreadable_report(folders: list[dict], kept: int, limit: int | None = None) -> list[str]:
    """"N folders could not be read; their M pictures were kept", then one line per folder with its reason."""
    one, n = len(folders) == 1, len(folders)
    lines = [f"{n} folder{'' if one else 's'} could not be read; {'its' if one else 'their'} {kept} "
             f"picture{'' if kept == 1 else 's'} {'was' if kept == 1 else 'were'} kept"]
    lines += [f"  {shown(f['path'])}: {f['error']} ({f['pictures_kept']} kept)" for f in folders[:limit]]
    if limit is not None and n > limit:
        lines.append(f"  ... and {n - limit} more (`search status` lists them all)")
    return lines


SORTS = ("score", "date", "path")


def _print_results(results, json_output: bool, paths_only: bool, print0: bool) -> None:
    if json_output:
        echo_json({"results": [r.to_dict() for r in results]})
    elif print0:
        typer.echo(b"".join(name_bytes(r.path) + b"\0" for r in results), nl=False)
    elif paths_only:
        for r in results:
            typer.echo(shown(r.path))
    elif not results:
        typer.echo("no results")
    else:
        for rank, r in enumerate(results, 1):
            typer.echo(f"{rank:>3}  {r.score:.4f}  {shown(r.path)}")


# The query's options, one alias each (typer's way to keep a long signature readable).
TermsArgument = Annotated[list[str] | None, typer.Argument(
    help="What to look for: words, and/or picture files. Combine with + and - (spaces around them) and "
         "weigh with N: , e.g.  \"2:golden retriever\" + ./pool.jpg - indoor", show_default=False)]
ImageOption = Annotated[Path | None, typer.Option("--image", help="Find pictures like this one.")]
AddOption = Annotated[list[str] | None, typer.Option("--add", help="Add a text or picture to the query (repeatable).",
                                                     show_default=False)]
SubtractOption = Annotated[list[str] | None, typer.Option(
    "--subtract", help="Subtract a text or picture from the query (repeatable).", show_default=False)]
WeightOption = Annotated[float | None, typer.Option("--weight", help="Weight of the TEXT against the other parts.",
                                                    show_default=False)]
TopOption = Annotated[int, typer.Option("--top", min=1, help="Number of results.")]
UnderOption = Annotated[Path | None, typer.Option("--under", help="Only pictures inside this folder.")]
AfterOption = Annotated[str | None, typer.Option(
    "--after", help="Only pictures taken (else modified) on or after DATE: YYYY[-MM[-DD[THH:MM]]].",
    show_default=False)]
BeforeOption = Annotated[str | None, typer.Option("--before", help="Only pictures taken (else modified) before DATE.",
                                                  show_default=False)]
ExtOption = Annotated[list[str] | None, typer.Option("--ext", help="Only these file extensions, e.g. jpg,png.",
                                                     show_default=False)]
TagOption = Annotated[list[str] | None, typer.Option("--tag", help="Only pictures with this tag (see `search tag`); "
                                                     "repeat to require several.", show_default=False)]
MinScoreOption = Annotated[float | None, typer.Option("--min-score", help="Drop results scoring below this cosine.",
                                                      show_default=False)]
SortOption = Annotated[str, typer.Option("--sort", help="Order of the top results: score, date or path.")]
EnsembleOption = Annotated[bool, typer.Option("--ensemble", help="Embed texts through prompt templates and average.")]
QueryTemplatesOption = Annotated[Path | None, typer.Option(
    "--templates", help="Templates file for --ensemble, one per line with {} (default: the CLIP paper's 80).",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
PathsOnlyOption = Annotated[bool, typer.Option(
    "--paths-only", help="Print only the paths, best first, one a line (names with control characters or bytes "
    "that are not UTF-8 in bash's $'...' form).")]
Print0Option = Annotated[bool, typer.Option(
    "--print0", help="Print only the paths, best first, each followed by a NUL byte: the exact bytes of every name, "
    "for scripts (xargs -0).")]


def _refuse_conflicting_query_options(image, sort, templates, ensemble, outputs: tuple[bool, ...]) -> None:
    if image is not None and not image.is_file():
        raise fail(f"picture not found: {image}" if not image.exists() else
                   f"--image {image} is not a picture file (a folder, device or FIFO)")
    if sort not in SORTS:
        raise fail(f"unknown --sort {sort!r}: use one of {', '.join(SORTS)}")
    if templates is not None and not ensemble:
        raise fail("--templates is for --ensemble: add --ensemble")
    if sum(outputs) > 1:
        raise fail("choose one output: --json, --paths-only or --print0")


@app.command()
@clean_errors
def query(
    text: TermsArgument = None,
    image: ImageOption = None,
    add: AddOption = None,
    subtract: SubtractOption = None,
    weight: WeightOption = None,
    top: TopOption = 10,
    under: UnderOption = None,
    after: AfterOption = None,
    before: BeforeOption = None,
    ext: ExtOption = None,
    tag: TagOption = None,
    min_score: MinScoreOption = None,
    sort: SortOption = "score",
    ensemble: EnsembleOption = False,
    templates: QueryTemplatesOption = None,
    library: LibraryOption = None,
    database: DatabaseOption = None,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    json_output: JsonOption = False,
    paths_only: PathsOnlyOption = False,
    print0: Print0Option = False,
):
    """Rank the library's pictures by similarity to a text, a picture, or a weighted mix of them."""
    from encoders import InputFileError, load_templates

    from .engine import SearchEngine
    from .filters import FilterError, Filters
    from .terms import TermError, check_score, parse_terms

    _refuse_conflicting_query_options(image, sort, templates, ensemble, (json_output, paths_only, print0))
    try:
        check_score(min_score, "--min-score")
        terms = parse_terms(text or (), add=add or (), subtract=subtract or (),
                            images=[image] if image is not None else (), weight=weight)
        filters = Filters.make(under, after, before, ext, tag)
        template_list = load_templates(templates) if templates is not None else None
    except (TermError, FilterError, InputFileError) as e:
        raise fail(str(e)) from None
    if not terms:
        raise fail("nothing to search for: give a TEXT, --image PATH, or both")
    spec = _model_spec(model, pretrained, checkpoint) if (model or pretrained or checkpoint) else None
    engine = SearchEngine(resolve_library_dir(library), spec=spec, one_shot=True, database=database)
    results = engine.query(terms=terms, top_k=top, filters=filters, min_score=min_score, sort=sort,
                           ensemble=ensemble, templates=template_list)
    _print_results(results, json_output, paths_only, print0)
    if engine.torch_loaded:  # the results first; then the export, so that the next text query skips torch
        sys.stdout.flush()
        _export_text_tower(engine.text_towers)


@app.command()
@clean_errors
def status(
    library: LibraryOption = None,
    database: DatabaseOption = None,
    failed: Annotated[bool, typer.Option("--failed", help="List the files that could not be indexed.")] = False,
    json_output: JsonOption = False,
):
    """What the library holds, which model filled it, and what failed."""
    from search.engine import SearchEngine

    engine = SearchEngine(resolve_library_dir(library), database=database)
    info = engine.status()
    failures = engine.library.store.reads.failed_files() if failed else []
    if json_output:
        if failed:
            info["failures"] = failures
        echo_json(info)
        return
    model = info["model"]
    typer.echo(f"library:   {shown(info['library'])}\npictures:  {info['pictures']}\nfailed:    {info['failed']}\n"
               f"model:     {model['architecture']} ({model['weights']}), dim {model['embed_dim']}, "
               f"fingerprint {model['fingerprint']}\ninference: {info['inference'] or '-'}\n"
               f"roots:     {', '.join(map(shown, info['roots'])) or '-'}\n"
               f"indexed:   {info['last_indexed'] or 'never'}")
    if info["unreadable_folders"]:
        report = unreadable_report(info["unreadable_folders"], info["pictures_kept"])
        typer.echo("\n".join([f"unreadable: {report[0]}", *report[1:]]))
    for failure in failures:
        typer.echo(f"{shown(failure['path'])}\t{one_line(failure['error'] or '')}{retry_note(failure)}")


def retry_note(failure: dict) -> str:
    """How a failure that may be transient is retried: nothing for one that waits for the file to change."""
    retries = f"retried {failure['retries']} time{'' if failure['retries'] == 1 else 's'}"
    if failure["retry"]:
        return f"\t(may be transient: tried again on the next run; {retries} so far)"
    if failure["retries"]:
        return f"\t({retries}; now tried again only when the file changes)"
    return ""


@app.command()
@clean_errors
def duplicates(
    threshold: Annotated[float, typer.Option("--threshold", help="Cosine similarity at or above which two pictures "
                                             "are near-duplicates.")] = 0.95,
    library: LibraryOption = None,
    database: DatabaseOption = None,
    json_output: JsonOption = False,
):
    """Groups of near-duplicate pictures, largest first; byte-identical files are marked exact."""
    import indexer
    from search.tools import find_duplicates

    lib = indexer.Library.open(resolve_library_dir(library), database=database)
    groups = find_duplicates(lib, threshold)
    if json_output:
        echo_json({"threshold": threshold, "groups": [g.to_dict() for g in groups]})
        return
    if not groups:
        typer.echo(f"no near-duplicates at threshold {threshold}")
        return
    for number, group in enumerate(groups, 1):
        kind = "exact copies" if all(m.exact for m in group.members) else "near-duplicates"
        typer.echo(f"group {number}: {len(group.members)} {kind}")
        for m in group.members:
            typer.echo(f"  {m.score:.4f}  {'exact' if m.exact else '     '}  {shown(m.path)}")


@app.command()
@clean_errors
def tag(
    labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated labels, e.g. \"beach,dog,receipt\".",
                                               show_default=False)] = None,
    labels_file: Annotated[Path | None, typer.Option("--labels-file", help="Labels, one per line.",
                                                     show_default=False)] = None,
    templates: Annotated[Path | None, typer.Option("--templates", help="Prompt templates, one per line with {} "
                                                   "(default: the CLIP paper's 80).", show_default=False)] = None,
    min_confidence: Annotated[float, typer.Option("--min-confidence", min=0.0, max=1.0,
                                                  help="Tag only when the best label's probability reaches this.")]
    = 0.0,
    library: LibraryOption = None,
    database: DatabaseOption = None,
    json_output: JsonOption = False,
):
    """Zero-shot tag every picture with its most likely label; then filter with `search query ... --tag LABEL`.

    Running it again with the same labels classifies only pictures added or changed since.
    """
    import indexer
    from encoders import PAPER_TEMPLATES, load_templates
    from search.tools import parse_labels, tag_pictures

    label_list = parse_labels(labels, labels_file)
    template_list = load_templates(templates) if templates is not None else PAPER_TEMPLATES
    lib = indexer.Library.open(resolve_library_dir(library), database=database)
    spec = lib.model_spec()
    lib.require_writable()
    texts, model = _tagging_text_tower(lib, len(label_list) * len(template_list)), None
    if texts is None:
        from encoders import load_encoder  # torch and open_clip (~10 s on a slow CPU): only once the inputs are good

        texts = model = load_encoder(spec)
    summary = tag_pictures(lib, texts, label_list, template_list, min_confidence)
    if json_output:
        echo_json(summary.as_dict())
    else:
        typer.echo(f"{summary.classified} pictures classified, {summary.skipped} already done")
        for label, count in summary.counts.items():
            typer.echo(f"  {count:>6}  {shown(label)}")
    if model is not None:  # loaded: export its text tower, so that the next tagging or text query skips torch
        sys.stdout.flush()
        _export_text_tower_of(lib.folder, model)


def _tagging_text_tower(lib, texts: int):
    """The library's text tower exported to ONNX, when its export recorded the model's logit scale (which turns
    scores into the tags' probabilities): tagging then imports no torch. None otherwise."""
    from encoders.text.onnx_runtime import OnnxTextEncoder

    from .text_tower import PREPACK_FROM_TEXTS

    exported = OnnxTextEncoder.for_library(lib.folder, lib.model.fingerprint, prepack=texts >= PREPACK_FROM_TEXTS)
    return exported if exported is not None and "logit_scale" in exported.meta else None


@app.command()
@clean_errors
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or roots to forget (the files stay on disk).",
                                                show_default=False)],
    library: LibraryOption = None,
    database: DatabaseOption = None,
    json_output: JsonOption = False,
):
    """Forget pictures, folders or whole roots: rows, vectors and tags go; files on disk are not touched."""
    import indexer
    from search.tools import remove_paths

    lib = indexer.Library.open(resolve_library_dir(library), database=database)
    summary = remove_paths(lib, paths)
    if json_output:
        echo_json(summary.as_dict())
        return
    typer.echo(f"{summary.pictures} pictures forgotten" +
               (f"; roots no longer indexed: {', '.join(map(shown, summary.roots))}" if summary.roots else ""))


@app.command()
@clean_errors
def reindex(
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    library: LibraryOption = None,
    database: DatabaseOption = None,
    exclude: ExcludeOption = None,
    include_hidden: HiddenOption = False,
    batch_size: BatchOption = None,
    workers: WorkersOption = None,
    decode_timeout: TimeoutOption = 60.0,
    wait: WaitOption = 0.0,
    inference: InferenceOption = None,
    keep_old: Annotated[bool, typer.Option("--keep-old", help="Keep the old library as LIBRARY.old.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Re-embed every picture with another model; the old library answers queries until the new one is complete."""
    import indexer
    from search.reindex import reindex as run_reindex

    if not (model or pretrained or checkpoint):
        raise fail("name the new model: --model ARCH with --pretrained TAG|none, or --checkpoint PATH")
    lib = indexer.Library.open(resolve_library_dir(library), database=database)
    lib.require_writable()
    tower = _ImageTower(_model_spec(model, pretrained, checkpoint), None, inference)
    encoder = tower()
    record = lib.model
    if record is not None and record.fingerprint == encoder.fingerprint.id:
        typer.echo(f"the library already uses {record.architecture} ({record.weights}): nothing to do")
        return
    options = _index_options(exclude, include_hidden, batch_size, workers, decode_timeout, wait)
    try:
        summary = run_reindex(lib, encoder, options, keep_old=keep_old)
    except KeyboardInterrupt:
        typer.echo("interrupted: the old library is unchanged; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    if json_output:
        echo_json(summary.as_dict())
    else:
        typer.echo(f"re-embedded with {summary.new_model}: {summary.pictures_after} pictures "
                   f"(before: {summary.pictures_before} with {summary.old_model}); {summary.tags_kept} tags kept"
                   + (f"; old library kept at {shown(str(summary.kept_old))}" if summary.kept_old else ""))
    sys.stdout.flush()
    _export_text_tower_of(lib.folder, tower.model)


@app.command()
@clean_errors
def export(
    jsonl: Annotated[bool, typer.Option(
        "--jsonl/--json", help="--json: one JSON object holding the library, its model and every picture; --jsonl: "
        "JSON Lines, one picture a line (the same fields as each picture of --json), for streaming tools.")] = False,
    vectors: Annotated[bool, typer.Option("--vectors", help="Include each picture's vector.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to FILE instead of standard output.",
                                                show_default=False)] = None,
    library: LibraryOption = None,
    database: DatabaseOption = None,
):
    """Every picture with its metadata (and vector) as one JSON object or as JSON Lines, for other tools."""
    import indexer
    from search.tools import export_json, export_jsonl

    if output is not None and output.is_dir():
        raise fail(f"--output {output} is a folder: name a file to write, e.g. {output / 'library.json'}")
    lib = indexer.Library.open(resolve_library_dir(library), database=database)
    chunks = (export_jsonl if jsonl else export_json)(lib, vectors=vectors)
    if output is None:
        sys.stdout.flush()
        stream = sys.stdout.buffer
        for chunk in chunks:
            stream.write(chunk)
        stream.flush()
        return
    opened = False
    try:
        with open(output, "wb") as out:
            opened = True
            for chunk in chunks:
                out.write(chunk)
    except OSError as e:
        if opened and output.is_file():  # no half-written export left behind (a full disk, say)
            output.unlink(missing_ok=True)
        raise fail(f"cannot write {output}: {e.strerror or e}") from None


@app.command("app")
@clean_errors
def run_app(
    library: LibraryOption = None,
    database: DatabaseOption = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port of the web page.")] = 8501,
    host: Annotated[str, typer.Option("--host", help="Address to bind; other machines cannot reach localhost.")]
    = "127.0.0.1",
    no_token: Annotated[bool, typer.Option(
        "--no-token", help="Serve the page without its key. Normally it opens only from the link printed here, "
        "whose key is new at every start; without it, every user of this machine who opens the address (and "
        "any program they run) sees your pictures. Refused with a --host that other machines can reach.")] = False,
):
    """Open the search page in a browser (Streamlit, on this machine only by default, behind a per-start key)."""
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise fail("the search page needs Streamlit, which is missing from this environment: "
                   "pip install streamlit (or reinstall clipsearch, which depends on it)")
    from .web.access import is_loopback
    from .web.launch import LaunchError, serve

    if no_token and not is_loopback(host):
        raise fail(f"--no-token serves the page to whoever reaches {host}:{port}: use it only with a --host of "
                   f"this machine (127.0.0.1 or localhost), or keep the key")
    try:
        code = serve(resolve_library_dir(library), host, port, token=not no_token, database=database)
    except LaunchError as e:
        raise fail(str(e)) from None
    raise typer.Exit(code)


def _register_optional_commands() -> None:
    try:
        from train.cli import register
    except ImportError:  # the trainer is not part of this checkout
        return
    register(app)


_register_optional_commands()


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a character the locale cannot show is escaped, never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    from typer._click.exceptions import UsageError  # typer's own copy of click (0.26 and later)

    try:
        code = app(prog_name="search", standalone_mode=False)
    except UsageError as e:  # a bad argument: one line, as every other error (click draws a box over lines)
        command = e.ctx.command_path if e.ctx is not None else "search"
        if e.format_message():  # none when the help was shown instead (`search` alone)
            typer.echo(f"error: {one_line(e.format_message())} (see `{command} --help`)", err=True)
        code = e.exit_code
    except typer.Abort:  # Ctrl-C while click itself was waiting (a prompt)
        typer.echo("\ninterrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
