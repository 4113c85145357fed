#!/usr/bin/env -S python3 -u
"""A shared chat room for `scalesocket --frame=json`: names, who is here, whispers.

scalesocket stamps every client message with the sender's "id"; a line this program prints with
an "id" goes to that client only, a line without one goes to everyone in the room. Every event
carries "at" (Unix time, seconds) so all clients show the same times.
"""

import json
import sys
import time

names: dict[int, str] = {}  # id -> name, in join order


def send(message: dict[str, object]) -> None:
    print(json.dumps({**message, "at": time.time()}), flush=True)


def here() -> list[dict[str, object]]:
    return [{"id": who, "name": name} for who, name in names.items()]


for line in sys.stdin:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    sender, kind = event.get("id"), event.get("type")
    if not isinstance(sender, int):
        continue
    if kind == "join":
        names[sender] = f"guest{sender}"
        # Private: the joiner learns its own id and who is here; the room hears who joined.
        send({"id": sender, "type": "welcome", "you": sender, "name": names[sender], "here": here()})
        send({"type": "joined", "who": sender, "name": names[sender]})
    elif kind == "leave":
        send({"type": "left", "who": sender, "name": names.pop(sender, f"guest{sender}")})
    elif kind == "name" and isinstance(event.get("name"), str):
        new = " ".join(event["name"].split())[:32]
        if not new or new in names.values():
            send({"id": sender, "type": "error", "text": f"the name {new!r} is taken" if new else "empty name"})
            continue
        old, names[sender] = names.get(sender, "?"), new
        send({"type": "renamed", "who": sender, "from": old, "to": new})
    elif kind == "say" and isinstance(event.get("text"), str):
        send({"type": "said", "who": sender, "name": names.get(sender, "?"), "text": event["text"][:1000]})
    elif kind == "whisper" and isinstance(event.get("to"), int) and isinstance(event.get("text"), str):
        to, text = event["to"], event["text"][:1000]
        if to not in names:
            send({"id": sender, "type": "error", "text": "they have left"})
            continue
        # A private message to one client, and a receipt to its sender.
        send({"id": to, "type": "whisper", "who": sender, "name": names.get(sender, "?"), "text": text})
        send({"id": sender, "type": "whispered", "to": to, "name": names[to], "text": text})
