#!/usr/bin/env -S python3 -u
"""A shared chat room for `scalesocket --frame=json`: private replies and broadcasts.

scalesocket stamps every client message with the sender's "id"; a line this program prints with
an "id" goes to that client only, a line without one goes to everyone in the room.
"""

import json
import sys

names: dict[int, str] = {}


def send(message: dict[str, object]) -> None:
    print(json.dumps(message), flush=True)


for line in sys.stdin:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    sender = event.get("id")
    kind = event.get("type")
    if kind == "join":
        names[sender] = f"guest{sender}"
        # private: only the joining client learns its own id and who is here
        send({"id": sender, "type": "welcome", "you": names[sender], "here": list(names.values())})  # join order
        send({"type": "joined", "name": names[sender]})  # broadcast
    elif kind == "leave":
        send({"type": "left", "name": names.pop(sender, f"guest{sender}")})
    elif kind == "name" and isinstance(event.get("name"), str):
        old, names[sender] = names.get(sender, "?"), event["name"][:32]
        send({"type": "renamed", "from": old, "to": names[sender]})
    elif kind == "say" and isinstance(event.get("text"), str):
        send({"type": "said", "name": names.get(sender, "?"), "text": event["text"][:1000]})
    elif kind == "whisper" and isinstance(event.get("to"), int):
        # a private message to one client, and a receipt to its sender
        send({"id": event["to"], "type": "whisper", "name": names.get(sender, "?"), "text": event.get("text", "")})
        send({"id": sender, "type": "whispered", "to": event["to"]})
