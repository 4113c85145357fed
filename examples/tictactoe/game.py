#!/usr/bin/env -S python3 -u
"""Tic-tac-toe for `scalesocket --frame=json --api --cache=tagged:50`: one game per room.

scalesocket stamps every client message (and the join/leave messages) with the sender's "id". This
program answers the sender alone with a line carrying that "id" (its role, the board, its mistakes),
tells the whole room with lines without one, marks the lines a late joiner should see again with
"_cache": true (moves and chat, replayed by --cache=tagged:), and publishes the game's state for the
lobby with a "_meta": true line (served by --api at /api/rooms).
"""

import json
import sys
from typing import Any

LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]

roles: dict[int, str] = {}  # client id -> "X", "O" or "spectator"
board: list[str] = [""] * 9
turn = "X"
state = "waiting"  # waiting (for two players), playing, "X wins", "O wins", draw


def send(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def player(mark: str) -> int | None:
    return next((client for client, role in roles.items() if role == mark), None)


def publish() -> None:
    """The lobby's view of this room, and everybody's view of the board."""
    players = sum(1 for role in roles.values() if role != "spectator")
    send({"_meta": True, "players": players, "spectators": len(roles) - players, "state": state, "turn": turn})
    send({"type": "board", "board": board, "turn": turn, "state": state})


def new_game() -> None:
    global board, turn, state
    board, turn = [""] * 9, "X"
    state = "playing" if player("X") is not None and player("O") is not None else "waiting"


def outcome() -> str:
    for a, b, c in LINES:
        if board[a] and board[a] == board[b] == board[c]:
            return f"{board[a]} wins"
    return "draw" if all(board) else "playing"


def join(client: int) -> None:
    role = next((mark for mark in ("X", "O") if player(mark) is None), "spectator")
    roles[client] = role
    if role != "spectator" and state == "waiting":
        new_game()
    send({"id": client, "type": "welcome", "you": role, "board": board, "turn": turn, "state": state})
    send({"type": "joined", "who": client, "role": role})


def leave(client: int) -> None:
    role = roles.pop(client, "spectator")
    send({"type": "left", "who": client, "role": role})
    if role != "spectator":
        # A spectator takes the free seat, and a game in progress starts again.
        waiting = next((other for other, r in roles.items() if r == "spectator"), None)
        if waiting is not None:
            roles[waiting] = role
            send({"id": waiting, "type": "seated", "you": role})
        new_game()
        send({"type": "restarted", "why": f"{role} left", "_cache": True})


def move(client: int, cell: object) -> None:
    global turn, state
    role = roles.get(client)
    if state != "playing":
        problem = "the game is not on"
    elif role != turn:
        problem = "not your turn" if role in ("X", "O") else "spectators cannot play"
    elif type(cell) is not int or not 0 <= cell < 9:
        problem = "no such cell"
    elif board[cell]:
        problem = "that cell is taken"
    else:
        board[cell] = turn
        send({"type": "moved", "mark": turn, "cell": cell, "_cache": True})
        state = outcome()
        turn = "O" if turn == "X" else "X"
        return
    send({"id": client, "type": "error", "text": problem})  # to the one who tried, and nobody else


for line in sys.stdin:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    sender, kind = event.get("id"), event.get("type")
    if not isinstance(sender, int):
        continue
    if kind == "join":
        join(sender)
    elif kind == "leave":
        leave(sender)
    elif kind == "move":
        move(sender, event.get("cell"))
    elif kind == "again" and roles.get(sender) in ("X", "O") and state not in ("playing", "waiting"):
        new_game()
        send({"type": "restarted", "why": f"{roles[sender]} asked for another game", "_cache": True})
    elif kind == "say" and isinstance(event.get("text"), str):
        text = event["text"][:300]
        send({"type": "said", "who": sender, "role": roles.get(sender, "?"), "text": text, "_cache": True})
        continue  # chat changes nothing of the game
    else:
        continue
    publish()
