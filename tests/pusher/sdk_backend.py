"""A backend written with Pusher's Python server SDK (pusher 3.x), driven by python.test.mjs:
`python sdk_backend.py PORT COMMAND [ARGS...]` prints the SDK's answer as JSON."""
import json
import sys

import pusher

APP_ID, KEY, SECRET = "4242", "py-key", "py-secret"


def main():
    port, command, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    c = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=port, ssl=False)
    if command == "auth":
        socket_id, channel = args
        data = {"user_id": "py-user", "user_info": {"lang": "python"}} if channel.startswith("presence-") else None
        out = c.authenticate(channel=channel, socket_id=socket_id, custom_data=data)
    elif command == "signin":
        (socket_id,) = args
        out = c.authenticate_user(socket_id, {"id": "py-user"})
    elif command == "trigger":
        channel, event, data = args
        out = c.trigger(channel, event, json.loads(data))
    elif command == "batch":
        out = c.trigger_batch([{"channel": a, "name": "batched", "data": {"channel": a}} for a in args])
    elif command == "channels":
        out = c.channels_info(prefix_filter=args[0], attributes=["user_count"])
    elif command == "channel":
        out = c.channel_info(args[0], ["subscription_count"])
    elif command == "users":
        out = c.users_info(args[0])
    elif command == "send_to_user":
        out = c.send_to_user(args[0], "notice", {"from": "python"})
    elif command == "terminate":
        out = c.terminate_user_connections(args[0])
    elif command == "bad_secret":
        bad = pusher.Pusher(app_id=APP_ID, key=KEY, secret="wrong", host="127.0.0.1", port=port, ssl=False)
        try:
            bad.trigger("x", "e", {})
            out = {"refused": False}
        except pusher.errors.PusherBadAuth as e:
            out = {"refused": True, "error": str(e)}
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
