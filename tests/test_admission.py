"""SPEC §3 room names and §13 limits, pure: app.names and app.admission's decisions, without I/O."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.admission import FDS_PER_CONNECTION, FDS_PER_ROOM, Limits, descriptor_reserve, out_of_resources
from app.names import MAX_LENGTH, RESERVED, name_problem
from cli.__main__ import to_settings
from tests.conftest import child_settings, error_of


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "empty"),
        ("a" * 129, "length"),
        ("a b", "characters"),
        ("caf\u00e9", "characters"),
        ("a/b", "characters"),
        ("x%41", "characters"),
        (".", "directory"),
        ("..", "directory"),
        *[(name, "reserved") for name in sorted(RESERVED)],
    ],
)
def test_each_broken_rule_is_named(name: str, rule: str) -> None:
    problem = name_problem(name)
    assert problem is not None and rule in problem


@given(st.text(alphabet="ABCXYZabcxyz0189._~-", min_size=1, max_size=MAX_LENGTH))
def test_names_of_the_allowed_characters_are_valid_unless_dots_or_reserved(name: str) -> None:
    assert (name_problem(name) is None) is (name not in {".", ".."} | RESERVED)


@given(st.text(min_size=1, max_size=200))
def test_a_valid_name_is_one_path_segment_that_leaves_no_directory(name: str) -> None:
    if name_problem(name) is None:
        assert "/" not in name and name not in (".", "..") and 1 <= len(name) <= MAX_LENGTH
        assert name.isascii() and "%" not in name


def test_limits_come_from_settings_and_oneshot_means_one_room() -> None:
    settings = child_settings("echo", maxrooms=7, maxclients=3, maxconnections=20, rooms="a,b", stop_grace=2.5)
    limits = Limits.from_settings(settings, descriptors=100)
    assert limits == Limits(frozenset({"a", "b"}), 7, 3, 20, 100, retry_after=3)
    assert Limits.from_settings(child_settings("echo", oneshot=True, maxrooms=7), None).maxrooms == 1


@pytest.mark.parametrize(
    ("limits", "join", "status", "kind"),
    [
        (Limits(), {"new_room": True, "connections": 10**6, "rooms": 10**6, "clients": 0}, None, None),
        (Limits(rooms=frozenset({"a"})), {"name": "b"}, 403, "rooms"),
        (Limits(rooms=frozenset({"a"})), {"name": "a"}, None, None),
        (Limits(maxrooms=2), {"new_room": True, "rooms": 2}, 503, "maxrooms"),
        (Limits(maxrooms=2), {"new_room": False, "rooms": 2, "clients": 1}, None, None),  # joining a live room
        (Limits(maxrooms=2), {"new_room": True, "rooms": 1}, None, None),
        (Limits(maxclients=2), {"new_room": False, "clients": 2}, 503, "maxclients"),
        (Limits(maxclients=1), {"new_room": True, "clients": 0}, None, None),
        (Limits(maxconnections=3), {"connections": 3}, 503, "maxconnections"),
        (Limits(maxconnections=3), {"connections": 2}, None, None),
        (Limits(descriptors=10), {"new_room": True, "connections": 2, "rooms": 2}, 503, "descriptors"),  # 3+9
        (Limits(descriptors=10), {"new_room": False, "connections": 2, "rooms": 2}, None, None),  # 3+6
    ],
)
def test_refusals(limits: Limits, join: dict[str, object], status: int | None, kind: str | None) -> None:
    values: dict[str, object] = {"name": "a", "new_room": True, "connections": 0, "rooms": 0, "clients": 0} | join
    name = values.pop("name")
    refusal = limits.refusal(str(name), **values)  # type: ignore[arg-type]
    if status is None:
        assert refusal is None
    else:
        assert refusal is not None and (refusal.status, refusal.kind) == (status, kind)
        if status == 503:
            assert refusal.headers == {"Retry-After": str(limits.retry_after)}


caps = st.none() | st.integers(1, 20)


@given(caps, caps, caps, st.none() | st.integers(0, 80), st.lists(st.tuples(st.integers(0, 5), st.booleans())))
def test_joins_admitted_one_by_one_never_overshoot(
    maxrooms: int | None,
    maxclients: int | None,
    maxconnections: int | None,
    descriptors: int | None,
    events: list[tuple[int, bool]],
) -> None:
    """A model of `Rooms`: joins (room index, True) and leaves (room index, False) in any order;
    whatever is admitted, the counts stay within every limit."""
    limits = Limits(None, maxrooms, maxclients, maxconnections, descriptors)
    clients: dict[int, int] = {}  # room -> clients
    for room, joining in events:
        if not joining:
            if clients.get(room):
                clients[room] -= 1
                if not clients[room]:
                    del clients[room]  # reaped
            continue
        connections = sum(clients.values())
        refusal = limits.refusal(
            f"r{room}",
            new_room=room not in clients,
            connections=connections,
            rooms=len(clients),
            clients=clients.get(room, 0),
        )
        if refusal is None:
            clients[room] = clients.get(room, 0) + 1
        else:
            assert refusal.status == 503
        total = sum(clients.values())
        assert maxrooms is None or len(clients) <= maxrooms
        assert maxclients is None or all(n <= maxclients for n in clients.values())
        assert maxconnections is None or total <= maxconnections
        assert descriptors is None or total * FDS_PER_CONNECTION + len(clients) * FDS_PER_ROOM <= descriptors


@given(caps, caps, caps, st.integers(0, 30), st.integers(0, 30), st.integers(0, 30), st.booleans())
def test_under_every_limit_a_join_is_admitted(
    maxrooms: int | None,
    maxclients: int | None,
    maxconnections: int | None,
    connections: int,
    rooms: int,
    clients: int,
    new_room: bool,
) -> None:
    limits = Limits(None, maxrooms, maxclients, maxconnections)
    refusal = limits.refusal("r", new_room=new_room, connections=connections, rooms=rooms, clients=clients)
    within = (
        (maxconnections is None or connections < maxconnections)
        and (not new_room or maxrooms is None or rooms < maxrooms)
        and (new_room or maxclients is None or clients < maxclients)
    )
    assert (refusal is None) is within


def test_the_descriptor_reserve_grows_with_the_limit() -> None:
    assert descriptor_reserve(256) == 32
    assert descriptor_reserve(1024) == 64
    assert descriptor_reserve(65536) == 4096


@pytest.mark.parametrize(
    ("code", "kind"),
    [(errno.EMFILE, "descriptors"), (errno.ENFILE, "descriptors"), (errno.EAGAIN, "processes"), (errno.ENOENT, None)],
)
def test_out_of_resources(code: int, kind: str | None) -> None:
    assert out_of_resources(OSError(code, "x")) == kind


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--origin", "https://a.test", "--sameorigin", "cat"], "--origin cannot be combined with --sameorigin"),
        (["--origin", "https://a.test/path", "cat"], "--origin"),
        (["--origin=", "cat"], "--origin"),
        (["--rooms", "a,..", "cat"], "--rooms"),
        (["--rooms", "health", "cat"], "--rooms"),
        (["--rooms=", "cat"], "--rooms"),
        (["--maxrooms", "0", "cat"], "--maxrooms"),
        (["--maxforks", "x", "cat"], "--maxrooms"),
        (["--maxclients", "-1", "cat"], "--maxclients"),
        (["--maxconnections", "1.5", "cat"], "--maxconnections"),
    ],
)
def test_bad_admission_options_exit_2_with_one_line_naming_them(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = error_of(argv, capsys)
    assert names in err, err


def test_admission_flags_and_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    s = to_settings(
        ["--origin", "https://a.test, null", "--rooms", "a,b", "--maxforks", "3", "--maxclients", "2", "cat"]
    )
    assert (s.origin, s.rooms, s.maxrooms, s.maxclients, s.maxconnections) == (
        ["https://a.test", "null"],
        ["a", "b"],
        3,
        2,
        None,
    )
    assert to_settings(["--origin", "*", "--maxconnections", "9", "cat"]).origin == ["*"]
    assert to_settings(["--sameorigin", "cat"]).sameorigin
    for name, value in [("ORIGIN", "*"), ("ROOMS", "lobby"), ("MAXFORKS", "4"), ("MAXCLIENTS", "5")]:
        monkeypatch.setenv(f"SCALESOCKET_{name}", value)
    s = to_settings(["cat"])
    assert (s.origin, s.rooms, s.maxrooms, s.maxclients) == (["*"], ["lobby"], 4, 5)
    monkeypatch.setenv("SCALESOCKET_MAXROOMS", "6")
    monkeypatch.delenv("SCALESOCKET_MAXFORKS")
    assert to_settings(["cat"]).maxrooms == 6
