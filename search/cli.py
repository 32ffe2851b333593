"""The `search` command. Heavy imports (torch, open_clip, faiss) happen inside commands only."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

from .library import LIBRARY_ENV, resolve_library_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search your own pictures with CLIP: index folders, then query by text or picture.")

LibraryOption = Annotated[Optional[str], typer.Option(
    "--library", help=f"Library folder (default: ${LIBRARY_ENV}, else the per-user data folder).")]
ModelOption = Annotated[Optional[str], typer.Option("--model", help="open_clip architecture, e.g. ViT-B-32.")]
PretrainedOption = Annotated[Optional[str], typer.Option(
    "--pretrained", help="open_clip pretrained tag, hf-hub:ORG/REPO, or 'none' for random weights.")]
CheckpointOption = Annotated[Optional[str], typer.Option(
    "--checkpoint", help="Model folder written by `search train`, or a weights file (with --model).")]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


def clean_errors(command: Callable) -> Callable:
    """Known failures become one line on stderr and exit code 2; Ctrl-C exits 130."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        from encoders import ModelError
        from indexer import LibraryError

        warnings.showwarning = _show_warning
        try:
            return command(*args, **kwargs)
        except (ModelError, LibraryError) as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            typer.echo("\ninterrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _model_spec(model, pretrained, checkpoint):
    from encoders import ModelSpec

    return ModelSpec.from_options(model, pretrained, checkpoint)


@app.command()
@clean_errors
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders (or files) to index.", show_default=False)],
    library: LibraryOption = None,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Glob of names or paths to skip.")] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="Index hidden files and folders.")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Decoding threads.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Embed every picture under PATHS into the library (incremental: only what changed)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import indexer
    from encoders import load_encoder

    folder = resolve_library_dir(library)
    lib = indexer.Library.open(folder, create=True)
    if lib.exists() and not (model or pretrained or checkpoint):
        spec = lib.model_spec()  # keep filling the library with its own model
    else:
        spec = _model_spec(model, pretrained, checkpoint)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise indexer.MissingRoot(f"root not found: {', '.join(missing)} (is it unmounted? nothing was changed)")
    encoder = load_encoder(spec)
    console = Console(stderr=True)
    with Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]} files/s"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("index", total=None, rate="-")

        class BarProgress(indexer.Progress):
            def start(self, total):
                bar.update(task, total=total)

            def advance(self, n=1):
                bar.advance(task, n)
                speed = bar.tasks[task].speed
                bar.update(task, rate=f"{speed:.1f}" if speed else "-")

        options = indexer.IndexOptions(batch_size=batch_size, workers=workers,
                                       scan=indexer.ScanOptions(excludes=tuple(exclude or ()),
                                                                include_hidden=include_hidden))
        try:
            summary = indexer.index_folders(lib, encoder, paths, options, BarProgress())
        except KeyboardInterrupt:
            bar.stop()
            typer.echo("interrupted: everything embedded so far is kept; run the same command again to finish",
                       err=True)
            raise typer.Exit(130) from None
    if json_output:
        typer.echo(json.dumps({"library": str(folder), **summary.as_dict()}))
        return
    s = summary
    rate = s.embedded / s.seconds if s.seconds else 0.0
    typer.echo(f"{s.added} added, {s.updated} updated, {s.moved} moved, {s.removed} removed, {s.failed} failed, "
               f"{s.unchanged} unchanged ({s.embedded} embedded in {s.seconds:.1f}s, {rate:.1f} pictures/s)")
    if s.failed:
        typer.echo(f"see the failures with: search status --failed --library {folder}")


@app.command()
@clean_errors
def query(
    text: Annotated[Optional[str], typer.Argument(help="What to look for, in words.", show_default=False)] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Find pictures like this one.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Number of results.")] = 10,
    under: Annotated[Optional[Path], typer.Option("--under", help="Only pictures inside this folder.")] = None,
    library: LibraryOption = None,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    paths_only: Annotated[bool, typer.Option("--paths-only", help="Print only the paths, best first.")] = False,
):
    """Rank the library's pictures by similarity to a text and/or a picture."""
    if not (text and text.strip()) and image is None:
        raise fail("nothing to search for: give a TEXT, --image PATH, or both")
    if image is not None and not image.is_file():
        raise fail(f"picture not found: {image}")
    from search.engine import SearchEngine

    spec = _model_spec(model, pretrained, checkpoint) if (model or pretrained or checkpoint) else None
    engine = SearchEngine(resolve_library_dir(library), spec=spec)
    results = engine.query(text=text, image=image, top_k=top, under=under)
    if json_output:
        typer.echo(json.dumps({"results": [r.to_dict() for r in results]}, ensure_ascii=False))
    elif paths_only:
        for r in results:
            typer.echo(r.path)
    elif not results:
        typer.echo("no results")
    else:
        for rank, r in enumerate(results, 1):
            typer.echo(f"{rank:>3}  {r.score:.4f}  {r.path}")


@app.command()
@clean_errors
def status(
    library: LibraryOption = None,
    failed: Annotated[bool, typer.Option("--failed", help="List the files that could not be indexed.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """What the library holds, which model filled it, and what failed."""
    from search.engine import SearchEngine

    engine = SearchEngine(resolve_library_dir(library))
    info = engine.status()
    failures = engine.library.store.failures() if failed else []
    if json_output:
        if failed:
            info["failures"] = [{"path": path, "error": error} for path, error in failures]
        typer.echo(json.dumps(info, ensure_ascii=False))
        return
    model = info["model"]
    typer.echo(f"library:   {info['library']}\npictures:  {info['pictures']}\nfailed:    {info['failed']}\n"
               f"model:     {model['architecture']} ({model['weights']}), dim {model['embed_dim']}, "
               f"fingerprint {model['fingerprint']}\nroots:     {', '.join(info['roots']) or '-'}\n"
               f"indexed:   {info['last_indexed'] or 'never'}")
    for path, error in failures:
        typer.echo(f"{path}\t{error}")


@app.command("app")
@clean_errors
def run_app(
    library: LibraryOption = None,
    port: Annotated[int, typer.Option("--port", help="Port of the web page.")] = 8501,
    host: Annotated[str, typer.Option("--host", help="Address to bind; other machines cannot reach localhost.")]
    = "127.0.0.1",
):
    """Open the search page in a browser (Streamlit, on this machine only by default)."""
    import subprocess

    page = Path(__file__).with_name("webapp.py")
    command = [sys.executable, "-m", "streamlit", "run", str(page), "--server.address", host,
               "--server.port", str(port), "--browser.gatherUsageStats", "false", "--",
               "--library", str(resolve_library_dir(library))]
    raise typer.Exit(subprocess.call(command))


def _register_optional_commands() -> None:
    try:
        from train.cli import register
    except ImportError:  # the trainer is not part of this checkout
        return
    register(app)


_register_optional_commands()


def main() -> None:
    app(prog_name="search")


if __name__ == "__main__":
    sys.exit(main())
