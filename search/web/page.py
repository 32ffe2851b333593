"""The search page: `search app` (which runs this file), `streamlit run app.py`, or this file itself.

Words, a picture, or both, against one library; a grid of thumbnails ranked by score; a
large view with the file's facts; "more like this" under every result. The page serves one
library, fixed when it starts: `-- --library DIR` on the command line, else $SEARCH_LIBRARY,
else the per-user folder.

Safety: a visitor sees nothing without the server's key (access.py; `-- --no-token` turns it
off, on this machine's own addresses only). The only files the page reads are rows of the
library that lie inside the library's folders, looked up by row id (served.py); an uploaded
picture is decoded from memory, never saved, within a byte cap and the decoder's memory bound.
Text typed into the page is never used as a path to open.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import streamlit as st

from encoders.images import picture_extensions
from search.library import resolve_library_dir
from search.web.access import NO_TOKEN_FLAG, TOKEN_PARAM, is_loopback, server_token, token_matches

log = logging.getLogger("clipsearch.app")

GRID_COLUMNS = 5
THUMB_HEIGHT = 170  # pixels: every card's picture box, whatever the picture's shape
# Cards of equal height, and file names that wrap at word boundaries.
PAGE_STYLE = f"""<style>
[class*="st-key-result-"] [data-testid="stImage"] img {{
  height: {THUMB_HEIGHT}px; width: 100%; object-fit: contain; background: #f6f6f8; border-radius: 4px;
}}
[class*="st-key-result-"] p {{ overflow-wrap: anywhere; margin-bottom: 0; }}
.block-container {{ padding-top: 2.5rem; }}
</style>"""
UPLOAD_TYPES = sorted(extension.lstrip(".") for extension in picture_extensions())  # what the indexer reads
MAX_UPLOAD_MB = 50  # as the server's own cap, server.maxUploadSize in .streamlit/config.toml
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024  # Streamlit's megabytes
NEEDS_KEY = ("This page opens only from the link with its key, printed in the terminal that started it "
             "(by `search app` or `streamlit run`).")
SORTS = {"score": "Best match", "date": "Newest first", "path": "File path"}


class UploadError(Exception):
    """An uploaded file that cannot be used as a query picture; the message is for the user."""


# -- pure helpers (tested directly) ---------------------------------------------------------


def library_from_argv(argv: list[str]) -> str | None:
    """`--library DIR` or `--library=DIR` among the script's arguments (after `--` on `streamlit run`)."""
    for i, arg in enumerate(argv):
        if arg == "--library" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--library="):
            return arg.split("=", 1)[1]
    return None


def library_folder() -> str:
    """The one library this page serves, fixed for the server's life."""
    return str(resolve_library_dir(library_from_argv(sys.argv[1:])))


def check_upload_size(size: int, name: str) -> None:
    """Before reading an upload's bytes: no bigger than the uploader allows (a client can send more)."""
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"“{name}” is {human_size(size)}: the page takes pictures up to {MAX_UPLOAD_MB} MB.")


def read_upload(data: bytes, name: str, min_side: int):
    """An uploaded file's bytes → an upright RGB PIL picture, or UploadError saying why not."""
    from indexer import DecodeError, decode_picture

    if not data:
        raise UploadError(f"“{name}” is empty: choose a picture file (JPEG, PNG, WebP, …)")
    check_upload_size(len(data), name)
    try:
        return decode_picture(data, min_side).image
    except DecodeError as e:  # not a picture, or too big to decode (pixels, memory): the decoder's one line
        raise UploadError(f"“{name}” cannot be used: {e}.") from None


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def local_time(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; the store writes UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def index_command(folder: str | Path) -> str:
    return f"search index PATH --library {folder}"


# -- cached per server process ----------------------------------------------------------------


@dataclass
class Opened:
    """One library as the page uses it: the engine (model, FAISS) and the thumbnail cache."""

    engine: object  # search.SearchEngine
    thumbs: object  # search.web.thumbnails.Thumbnails
    lock: threading.Lock


@st.cache_resource(show_spinner=False, max_entries=4)
def open_library(folder: str, fingerprint: str) -> Opened:
    """Once per library and model: a re-index refreshes the FAISS index inside the engine."""
    from search import SearchEngine
    from search.web.thumbnails import Thumbnails

    engine = SearchEngine(folder)
    return Opened(engine=engine, thumbs=Thumbnails(engine.library), lock=threading.Lock())


@st.cache_resource(show_spinner=False, max_entries=4)
def open_store(folder: str):
    """The library's database handle, cheap to keep; raises LibraryError when there is none."""
    from indexer import Library

    return Library.open(folder)


# -- the page -------------------------------------------------------------------------------


def no_library(folder: str, reason: str) -> None:
    st.info(f"**No pictures to search yet.** {reason}")
    st.markdown("Index a folder of pictures into this library from a terminal, then reload this page:")
    st.code(index_command(folder), language="bash")
    st.caption("Replace PATH with a folder of pictures, e.g. `~/Pictures`. "
               "Indexing again later only adds what changed.")


def sidebar_status(library, record) -> None:
    with library.store.reads.snapshot() as reads:
        counts, roots = reads.counts(), reads.roots()
    st.sidebar.markdown(
        f"**{counts['pictures']:,} pictures**  \n"
        f"Model: `{record.architecture}` ({record.weights})  \n"
        f"Last indexed: {local_time(record.last_indexed_at)}")
    if roots:
        st.sidebar.caption("Folders: " + ", ".join(f"`{root}`" for root in roots))
    if counts["failed"]:
        files = "file" if counts["failed"] == 1 else "files"
        if st.sidebar.toggle(f"{counts['failed']:,} {files} could not be read — show", key="show_failed"):
            failures = library.store.reads.failures()
            st.sidebar.dataframe([{"file": p, "reason": e} for p, e in failures[:1000]], hide_index=True)
            if len(failures) > 1000:
                st.sidebar.caption(f"… and {len(failures) - 1000:,} more (`search status --json` lists all).")
    else:
        st.sidebar.caption("No unreadable files.")


def controls() -> dict:
    st.sidebar.subheader("Results")
    top_k = st.sidebar.slider("Number of results", 1, 100, 20, key="top_k")
    min_score = st.sidebar.slider("Minimum score", 0.0, 1.0, 0.0, 0.01, key="min_score",
                                  help="Hide results scoring below this (0 shows everything).")
    under = st.sidebar.text_input("Only under this folder", key="under", placeholder="e.g. /home/me/Pictures/2024",
                                  help="Search only pictures inside this folder of the library.").strip()
    sort = st.sidebar.radio("Sort by", list(SORTS), format_func=SORTS.get, key="sort", horizontal=True)
    return {"top_k": top_k, "min_score": min_score or None, "under": under or None, "sort": sort}


def search_like(row_id: int) -> None:
    """Button callback: search with a library picture, replacing the words and any upload."""
    st.session_state["like"] = int(row_id)
    st.session_state["q"] = ""
    st.session_state["uploader_round"] = st.session_state.get("uploader_round", 0) + 1


def forget_like() -> None:
    st.session_state.pop("like", None)


def upload_vector(opened: Opened, uploaded):
    """The uploaded picture's vector, computed once per upload."""
    check_upload_size(uploaded.size, uploaded.name)
    data = uploaded.getvalue()
    key = ("upload", hashlib.blake2b(data, digest_size=16).hexdigest(), opened.engine.record.fingerprint)
    cache = st.session_state.setdefault("upload_vectors", {})
    if key not in cache:
        engine = opened.engine
        image = read_upload(data, uploaded.name, min(engine.image_encoder.image_size))  # its ONNX export: no torch
        with opened.lock:
            cache.clear()
            cache[key] = engine.image_vector(image)
    return cache[key]


def query_box(opened: Opened):
    """The search inputs; returns (text, picture term or None, picture label, picture weight)."""
    from search import Term

    text = st.text_input("Search your pictures", key="q", placeholder="Describe a picture, e.g. a dog on a beach",
                         help="Type words and press Enter.").strip()
    round_ = st.session_state.get("uploader_round", 0)
    uploaded = st.file_uploader("…or search by picture (drag and drop one here)", type=UPLOAD_TYPES,
                                key=f"upload-{round_}", max_upload_size=MAX_UPLOAD_MB)
    if uploaded is not None and st.session_state.get("upload_seen") != uploaded.file_id:
        # A new upload replaces a "more like this" picture. (Not an on_change callback: the browser
        # reports the previous uploader's files gone when "more like this" replaces it, which would
        # fire it at the wrong moment.)
        st.session_state["upload_seen"] = uploaded.file_id
        forget_like()
    picture, label = None, None
    if uploaded is not None and "like" not in st.session_state:
        picture = Term(upload_vector(opened, uploaded), is_image=True)
        label = f"the picture you uploaded ({uploaded.name})"
    elif "like" in st.session_state:
        row_id = st.session_state["like"]
        row = opened.engine.library.store.reads.pictures([row_id]).get(row_id)
        refused = None if row is None else outside_note(opened, row.path)
        if row is None or refused:
            forget_like()
            st.warning(refused or "That picture is no longer in the library.")
        else:
            picture = Term(row.path, is_image=True)
            label = f"“{Path(row.path).name}”"
            with st.container(horizontal=True, vertical_alignment="center"):
                show_thumbnail(opened, row_id, width=96)
                st.markdown(f"Pictures like **{Path(row.path).name}**  \n`{Path(row.path).parent}`")
                st.button("Clear", key="clear-like", on_click=forget_like, icon=":material/close:")
    weight = 1.0
    if text and picture is not None:
        weight = st.slider("Weight of the picture against the words", 0.0, 1.0, 0.5, 0.05, key="picture_weight",
                           help="0: only the words count; 1: only the picture counts.")
    return text, picture, label, weight


def outside_note(opened: Opened, path: str) -> str | None:
    """Why a row's file may not be read ("more like this" reads it when it changed since indexing), or None."""
    from search.web.served import OutsideLibrary, inside_roots, real_roots

    try:
        inside_roots(path, real_roots(opened.engine.library))
    except OutsideLibrary as e:
        return str(e)
    return None


def show_thumbnail(opened: Opened, row_id: int, width: int | str = "stretch", size: int | None = None,
                   data=None) -> bool:
    """A preview of a library row (made now unless ``data`` holds it already, or the reason it can't be shown)."""
    from search.web.thumbnails import GRID_SIZE, PreviewError

    if data is None:
        try:
            data = opened.thumbs.get(row_id, size or GRID_SIZE)
        except PreviewError as e:
            data = e
    if isinstance(data, PreviewError):
        st.warning(str(data), icon=":material/broken_image:")
        return False
    st.image(data, width=width)
    return True


@st.dialog("Picture", width="large")
def show_picture(opened: Opened, result) -> None:
    from search.web.thumbnails import VIEW_SIZE

    path = Path(result.path)
    picture, details = st.columns([3, 2])
    with picture:  # natural size up to the column: a small picture is not blown up
        show_thumbnail(opened, result.id, width="content", size=VIEW_SIZE)
    details.markdown(f"**{path.name}**")
    details.code(str(path), language=None, wrap_lines=True)
    size = f"{result.width} × {result.height} pixels" if result.width and result.height else "unknown"
    facts = {
        "Score": f"{result.score:.3f}",
        "Dimensions": size,
        "File size": human_size(result.size),
        "Date taken": result.taken_at.strftime("%Y-%m-%d %H:%M") if result.taken_at else "—",
        "Modified": result.modified.strftime("%Y-%m-%d %H:%M"),
        "Folder": str(path.parent),
    }
    details.markdown("\n".join(f"- **{k}:** {v}" for k, v in facts.items()))
    if details.button("More like this", key=f"dialog-more-{result.id}", icon=":material/image_search:",
                 on_click=search_like, args=(result.id,)):
        st.rerun()  # close the dialog and show the new results


def shown_folder(path: Path, roots: list[str]) -> str:
    """A picture's folder as the user knows it: relative to the indexed folder that holds it."""
    for root in sorted(roots, key=len, reverse=True):
        root_path = Path(root)
        if path.parent == root_path or root_path in path.parent.parents:
            relative = path.parent.relative_to(root_path)
            return f"{root_path.name}/{relative}" if str(relative) != "." else root_path.name
    return str(path.parent)


def results_grid(opened: Opened, results) -> None:
    roots = opened.engine.library.store.reads.roots()
    thumbnails = opened.thumbs.get_many([r.id for r in results])
    for start in range(0, len(results), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS)
        for column, result in zip(columns, results[start:start + GRID_COLUMNS], strict=False):
            with column, st.container(border=True, key=f"result-{result.id}"):
                path = Path(result.path)
                show_thumbnail(opened, result.id, data=thumbnails[result.id])
                st.markdown(f"**{result.score:.3f}** · {path.name}")
                st.caption(shown_folder(path, roots), help=str(path))
                with st.container(horizontal=True, gap="small"):
                    # No help= tooltips here: Streamlit renders a button with one twice, on every card.
                    if st.button("View", key=f"view-{result.id}", icon=":material/open_in_full:", type="tertiary"):
                        show_picture(opened, result)
                    st.button("More like this", key=f"more-{result.id}", on_click=search_like, args=(result.id,),
                              icon=":material/image_search:", type="tertiary")


def run_query(opened: Opened, text: str, picture, weight: float, options: dict):
    from search import Term

    terms = []
    if text:
        terms.append(Term(text, weight=1.0 - weight if picture is not None else 1.0, is_image=False))
    if picture is not None:
        terms.append(Term(picture.value, weight=weight, is_image=True))
    terms = [t for t in terms if t.weight > 0]
    with opened.lock:
        results = opened.engine.query(terms=terms, top_k=options["top_k"], under=options["under"],
                                      min_score=options["min_score"], sort=options["sort"])
    # The engine sorts dates oldest first; on a page of pictures the newest come first.
    return results[::-1] if options["sort"] == "date" else results


def page() -> None:
    from indexer import LibraryError

    st.html(PAGE_STYLE)
    st.title("Picture search")
    folder = library_folder()
    st.sidebar.header("Library")
    st.sidebar.code(folder, language=None, wrap_lines=True)
    st.sidebar.caption("To search another library, start the page again with `search app --library DIR`.")
    library, record = library_and_model(folder)
    if record is None:
        return
    sidebar_status(library, record)
    options = controls()
    try:
        with st.spinner("Loading the index…"):
            opened = open_library(folder, record.fingerprint)
    except LibraryError as e:
        no_library(folder, str(e))
        return
    asked = query_and_results(opened, options)
    if asked is not None:
        show_results(opened, options, *asked)


def library_and_model(folder: str):
    """The library's store and model record; (None, None) after saying on the page why there is none."""
    from indexer import LibraryError
    from indexer.errors import NoLibrary

    try:
        library = open_store(folder)
        record = library.model
    except NoLibrary as e:
        no_library(folder, f"There is no library at `{folder}`.")
        log.info("no library: %s", e)
        return None, None
    except LibraryError as e:  # damaged, newer, unreadable...: its own one line says what to do
        st.error(f"**This library cannot be opened.** {e}", icon=":material/error:")
        return None, None
    if record is None:
        no_library(folder, f"The library at `{folder}` has no pictures yet.")
    return library, record


def query_and_results(opened: Opened, options: dict):
    """(text, picture label, results) of the query box; None when there is no query or after showing its error."""
    from encoders import ModelError
    from indexer import LibraryError, ModelMismatch
    from search import QueryError

    try:
        text, picture, label, weight = query_box(opened)
        if not text and picture is None:
            st.caption("Type a few words and press Enter, drop a picture above, or press “More like this” "
                       "under any result.")
            return None
        with st.spinner("Searching…"):
            return text, label, run_query(opened, text, picture, weight, options)
    except UploadError as e:
        st.error(str(e), icon=":material/broken_image:")
    except ModelMismatch as e:
        st.error(f"**This library was made with another model.** {e}", icon=":material/error:")
    except ModelError as e:
        st.error(f"**The library's model cannot be loaded.** {e}", icon=":material/error:")
    except (QueryError, LibraryError) as e:
        st.error(str(e), icon=":material/error:")
    return None


def show_results(opened: Opened, options: dict, text: str, label: str | None, results) -> None:
    what = " and ".join(x for x in (f"“{text}”" if text else None, label) if x)
    if not results:
        hints = []
        if options["min_score"]:
            hints.append("lower the minimum score")
        if options["under"]:
            hints.append("clear “Only under this folder” (or check it is a folder that was indexed)")
        st.info(f"No pictures match {what}." + (" Try to " + " or ".join(hints) + "." if hints else ""),
                icon=":material/search_off:")
        return
    order = {"score": "best match first", "date": "newest first", "path": "by file path"}[options["sort"]]
    st.caption(f"{len(results)} {'picture' if len(results) == 1 else 'pictures'} for {what}, {order}.")
    results_grid(opened, results)


def admitted() -> bool:
    """Whether this session may see the page. Without a key (`--no-token`) only on a loopback address;
    with one, once the session has shown it (kept in the session, so later reruns need not)."""
    address = st.get_option("server.address")
    if NO_TOKEN_FLAG in sys.argv[1:]:
        if is_loopback(address):
            return True
        note = (f"This page is not served: it has no key (--no-token) and listens on {address or 'every address'}, "
                f"which other machines can reach. Start it on 127.0.0.1, or with its key.")
        print(note, file=sys.stderr, flush=True)
        st.error(note)
        return False
    if st.session_state.get("admitted"):
        return True
    key = server_token(address, st.get_option("server.port"), st.get_option("server.baseUrlPath") or "")
    if token_matches(st.query_params.get(TOKEN_PARAM), key):
        st.session_state["admitted"] = True
        return True
    st.markdown(NEEDS_KEY)
    return False


def main() -> None:
    st.set_page_config(page_title="clipsearch", page_icon=":material/image_search:", layout="wide")
    try:
        if admitted():
            page()
    except Exception as e:  # never a traceback on the page: one readable line, details in the server log
        from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

        if isinstance(e, ScriptControlException):  # st.rerun / st.stop
            raise
        log.exception("the search page failed")
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        st.error(f"Something went wrong: {type(e).__name__}{': ' + first if first else ''}. "
                 "Details are in the terminal that runs the app.", icon=":material/error:")


if __name__ == "__main__":
    main()
