"""Who sees the search page (AppTest): nothing but one line without the server's key; the page with it."""

from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("streamlit")
from app_helpers import APP, COLOURS, TEST_KEY, TIMEOUT, make_pictures, page_test, result_names, texts  # noqa: E402
from streamlit import config  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from encoders import ModelSpec, load_encoder  # noqa: E402
from indexer import Library, index_folders  # noqa: E402
from search.web.access import TOKEN_ENV, is_loopback, page_url, token_matches  # noqa: E402
from search.web.page import NEEDS_KEY  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("gatelib")
    pictures = make_pictures(root / "holiday-pictures", COLOURS[:4])
    lib = Library.open(root / "secret-library", create=True)
    index_folders(lib, load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None)),
                  [root / "holiday-pictures"])
    return {"dir": root / "secret-library", "pictures": pictures,
            "ids": {p: lib.store.reads.picture_by_path(str(p)).id for p in pictures}}


@pytest.fixture
def listening_on():
    """Set the address the server is bound to, as `--server.address` would; restored afterwards."""
    before = config.get_option("server.address")
    yield lambda address: config.set_option("server.address", address)
    config.set_option("server.address", before)


def elements(at) -> list:
    """Every element the page shows, in the main area and the sidebar (blocks left out)."""
    def walk(node):
        children = getattr(node, "children", None)
        if children is None:
            yield node
        else:
            for child in children.values():
                yield from walk(child)
    return [element for area in (at.main, at.sidebar) for element in walk(area)]


def shows_only_the_note(at, library) -> None:
    assert not at.exception
    shown = elements(at)
    assert [(e.type, e.value) for e in shown] == [("markdown", NEEDS_KEY)]
    assert library["dir"].name not in NEEDS_KEY and "holiday" not in NEEDS_KEY


def test_without_the_key_a_visitor_sees_one_line(monkeypatch, library):
    at = page_test(monkeypatch, library["dir"], key=None)
    at.run()
    shows_only_the_note(at, library)


@pytest.mark.parametrize("wrong", ["", "x", TEST_KEY[:-1], TEST_KEY + "x", TEST_KEY.upper(), "ключ"])
def test_a_wrong_key_sees_the_same_line(monkeypatch, library, wrong):
    at = page_test(monkeypatch, library["dir"], key=wrong)
    at.run()
    shows_only_the_note(at, library)


def test_the_key_opens_the_page_for_the_whole_session(monkeypatch, library):
    at = page_test(monkeypatch, library["dir"])
    at.run()
    assert not at.exception and at.title[0].value == "Picture search"
    assert "4 pictures" in texts(at.sidebar.markdown)

    at.query_params.pop("token")  # later reruns of the session need not carry the key
    at.text_input(key="q").input("a red circle").run()
    assert len(result_names(at)) == 4
    target = library["pictures"][2]
    at.button(key=f"more-{library['ids'][target]}").click().run()
    assert result_names(at)[0] == target.name and not at.error

    other = page_test(monkeypatch, library["dir"], key=None)  # another visitor: another session
    other.run()
    shows_only_the_note(other, library)


def test_no_token_serves_the_page_on_loopback(monkeypatch, library, listening_on):
    monkeypatch.setattr("sys.argv", ["app.py", "--no-token"])
    for address in ("127.0.0.1", "localhost", "::1"):
        listening_on(address)
        at = page_test(monkeypatch, library["dir"], key=None)
        at.run()
        assert not at.exception and at.title[0].value == "Picture search", address


def test_no_token_off_loopback_is_refused_on_the_page_and_in_the_log(monkeypatch, library, listening_on, capsys):
    monkeypatch.setattr("sys.argv", ["app.py", "--no-token"])
    for address in ("0.0.0.0", ""):
        listening_on(address)
        at = page_test(monkeypatch, library["dir"], key=TEST_KEY)  # a key in the link changes nothing
        at.run()
        assert not at.exception
        assert [e.type for e in elements(at)] == ["error"]
        note = at.error[0].value
        assert note.startswith("This page is not served: it has no key (--no-token) and listens on ")
        assert note in capsys.readouterr().err


def test_with_its_key_the_page_may_listen_anywhere(monkeypatch, library, listening_on):
    listening_on("0.0.0.0")
    at = page_test(monkeypatch, library["dir"], key=None)
    at.run()
    shows_only_the_note(at, library)
    at = page_test(monkeypatch, library["dir"])
    at.run()
    assert at.title[0].value == "Picture search"


def test_streamlit_run_makes_its_own_key_and_prints_the_link(monkeypatch, library, capsys):
    """`streamlit run app.py` without `search app`: the first visit makes the key and writes the link to the
    terminal; the page says to use it; the same key holds for every later visitor."""
    at = page_test(monkeypatch, library["dir"], key=None)
    monkeypatch.delenv(TOKEN_ENV)  # page_test set it: restored (removed) after the test
    at.run()
    shows_only_the_note(at, library)
    printed = capsys.readouterr().err
    link = re.search(r"(http://\S+/\?token=(\S+))", printed)
    assert link, printed
    assert link.group(2) == os.environ[TOKEN_ENV] and len(link.group(2)) >= 40
    assert link.group(1) == page_url(config.get_option("server.address"), config.get_option("server.port"),
                                     link.group(2), config.get_option("server.baseUrlPath"))

    again = AppTest.from_file(str(APP), default_timeout=TIMEOUT)  # the next visitor, from the printed link
    again.query_params["token"] = link.group(2)
    again.run()
    assert again.title[0].value == "Picture search"
    assert "token=" not in capsys.readouterr().err  # announced once


def test_key_helpers():
    assert token_matches("abc", "abc") and not token_matches("abd", "abc") and not token_matches(None, "abc")
    assert not token_matches("", "abc") and not token_matches("ключ", "abc")
    assert page_url("0.0.0.0", 8501, "a-b_c") == "http://127.0.0.1:8501/?token=a-b_c"
    assert page_url("::1", 9000) == "http://[::1]:9000/"
    assert page_url("localhost", 80, None, "/photos/") == "http://localhost:80/photos/"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback(None)
    assert not is_loopback("::") and not is_loopback("no-such-host.invalid")
