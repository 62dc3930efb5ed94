"""The session core: a session's state and how changes apply to it
(`_state`), the requests as a table of pure decisions (`_commands`), and the
actor that sequences, journals, acknowledges and publishes (`_actor`).

Nothing here knows of transports, the registry or the reaper: the actor is
given what it uses when it is made.
"""
