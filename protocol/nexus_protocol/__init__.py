"""nexus_protocol: the nexusd wire protocol, sans-I/O.

Messages are frozen attrs classes (`MESSAGE_TYPES` maps each wire tag to its
class); `encode_body`/`decode_body` convert them; `Connection` runs the
handshake and state machine over bytes. No sockets, no event loop, no clock.
"""

from ._codec import check_value as check_value
from ._codec import decode_body as decode_body
from ._codec import encode_body as encode_body
from ._codec import frame as frame
from ._codec import validate as validate
from ._connection import NEED_DATA as NEED_DATA
from ._connection import PROTOCOL_VERSIONS as PROTOCOL_VERSIONS
from ._connection import TRANSITIONS as TRANSITIONS
from ._connection import Connection as Connection
from ._connection import ConnectionClosed as ConnectionClosed
from ._connection import ConnectionState as ConnectionState
from ._connection import Framing as Framing
from ._connection import NeedData as NeedData
from ._connection import Side as Side
from ._defaults import DEFAULT_WS_HOST as DEFAULT_WS_HOST
from ._defaults import DEFAULT_WS_PORT as DEFAULT_WS_PORT
from ._defaults import default_socket_path as default_socket_path
from ._defaults import default_state_dir as default_state_dir
from ._errors import FATAL_CODES as FATAL_CODES
from ._errors import ErrorCode as ErrorCode
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._limits import DEFAULT_LIMITS as DEFAULT_LIMITS
from ._limits import Limits as Limits
from ._messages import MESSAGE_TYPES as MESSAGE_TYPES
from ._messages import Analytics as Analytics
from ._messages import Attach as Attach
from ._messages import Attached as Attached
from ._messages import Change as Change
from ._messages import Create as Create
from ._messages import Created as Created
from ._messages import Delete as Delete
from ._messages import Detach as Detach
from ._messages import Error as Error
from ._messages import Expired as Expired
from ._messages import Get as Get
from ._messages import Grant as Grant
from ._messages import Granted as Granted
from ._messages import Hello as Hello
from ._messages import Invalidate as Invalidate
from ._messages import Invalidated as Invalidated
from ._messages import Kind as Kind
from ._messages import Lagged as Lagged
from ._messages import ListSessions as ListSessions
from ._messages import Message as Message
from ._messages import Ok as Ok
from ._messages import Patch as Patch
from ._messages import Ping as Ping
from ._messages import Pong as Pong
from ._messages import Presence as Presence
from ._messages import Progress as Progress
from ._messages import Renew as Renew
from ._messages import Renewed as Renewed
from ._messages import Report as Report
from ._messages import Request as Request
from ._messages import Result as Result
from ._messages import Role as Role
from ._messages import Run as Run
from ._messages import RunStarted as RunStarted
from ._messages import SessionEvent as SessionEvent
from ._messages import SessionRequest as SessionRequest
from ._messages import Sessions as Sessions
from ._messages import Set as Set
from ._messages import Shutdown as Shutdown
from ._messages import Snapshot as Snapshot
from ._messages import StateReply as StateReply
from ._messages import Stats as Stats
from ._messages import Summary as Summary
from ._messages import SwitchBegin as SwitchBegin
from ._messages import SwitchComplete as SwitchComplete
from ._messages import Switched as Switched
from ._messages import Sync as Sync
from ._messages import UpdateContext as UpdateContext
from ._messages import Value as Value
from ._messages import Welcome as Welcome
from ._messages import Written as Written

__version__ = "1.0.0"
