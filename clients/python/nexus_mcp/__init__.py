"""nexus_mcp: the Model Context Protocol face of nexusd, defined once.

`build_server` makes the MCP server (tools named as the Session Management
Guide names its calls, the sessions as resources, change notifications for
subscribed resources) over a `Backend`: the daemon serves it at ``/mcp``
with its session service as the backend, and ``nexus mcp`` (the stdio
bridge) with a `nexus_client` connection as the backend. This package
imports neither `nexusd` nor `nexus_client`: both import it.
"""

from ._binding import Backend as Backend
from ._binding import Binding as Binding
from ._binding import WatchRefused as WatchRefused
from ._server import SERVER_NAME as SERVER_NAME
from ._server import build_server as build_server
from ._tools import TOOLS as TOOLS
from ._tools import Tool as Tool
