"""The channel adapters of the msgpack protocol: the Unix socket and WebSocket
transports, the connection handler that serves a transport through the session
service, and the connection's outgoing queue."""
