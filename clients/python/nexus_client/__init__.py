"""nexus_client: talk to a nexusd daemon from Python and from the shell.

* `AsyncClient` / `open_client`: the trio client (one connection, concurrent
  requests, automatic reconnect, `Watch` iterators that resume without gaps).
* `Nexus`: a blocking facade with the Session Management Guide's method names,
  running trio in a background thread.
* ``nexus``: the command line (`nexus_client._cli.main`), exit codes in `ExitCode`.

Where the daemon is: a Unix socket path, a ``ws://``/``wss://`` URL, or None
for the one ``nexus`` uses (`default_target`): ``$NEXUS_SOCKET``, else
``$NEXUS_URL``, else its default socket (`nexus_protocol.default_socket_path`).

Behaviour worth knowing (details in the docstrings of `_core` and `_watch`):

* Reconnects use exponential backoff with full jitter (`Backoff`); callers
  retry their own calls with the same policy (`retry`, `retry_async`). Given
  several endpoints, a client tries them in order at each (re)connection and
  says which it uses (`AsyncClient.target`, `Nexus.endpoint`). The first
  connection is not retried: `CannotConnect` comes out of ``async with``.
* An expired or invalidated session is continued as a new one carrying its
  context and named keys from what the client last synced
  (`continue_session`): the daemon keeps nothing of an ended session.
* A request in flight when the connection drops raises `ConnectionLost` and is
  never re-sent (it may have been applied). Requests not yet written wait for
  the next connection; so do those a draining daemon (`shutdown`) answered
  `unavailable`, which were not applied.
* A `Watch` yields `Change` events in seq order, each once, across reconnects,
  daemon `Lagged` notices and its own buffer overflowing: it re-attaches with
  ``since=<last seq>`` and drops anything at or below it. If the daemon no
  longer has those changes, the watch yields a `Snapshot` with
  ``recovered=False``: the state was replaced and some changes were skipped.
* Errors are exceptions by meaning (`SessionNotFound`, `Conflict`, `Busy`, ...),
  each with the protocol `code`, the daemon's `message` and `retry_after`.

The events a watch yields are the `nexus_protocol` classes, re-exported here.
This package never imports the daemon (`nexusd`).
"""

from nexus_protocol import Change as Change
from nexus_protocol import Expired as Expired
from nexus_protocol import Invalidated as Invalidated
from nexus_protocol import Presence as Presence
from nexus_protocol import Progress as Progress
from nexus_protocol import Result as Result
from nexus_protocol import Snapshot as Snapshot

from ._async_client import DEFAULT_CLIENT_NAME as DEFAULT_CLIENT_NAME
from ._async_client import AsyncClient as AsyncClient
from ._async_client import open_client as open_client
from ._async_client import start_channel as start_channel
from ._backoff import RETRYABLE as RETRYABLE
from ._backoff import Backoff as Backoff
from ._backoff import retry as retry
from ._backoff import retry_async as retry_async
from ._blocking import Nexus as Nexus
from ._core import ClientStatistics as ClientStatistics
from ._credentials import CredentialStore as CredentialStore
from ._credentials import default_credentials_path as default_credentials_path
from ._errors import ERROR_CLASSES as ERROR_CLASSES
from ._errors import BadRequest as BadRequest
from ._errors import Busy as Busy
from ._errors import CannotConnect as CannotConnect
from ._errors import Conflict as Conflict
from ._errors import ConnectionLost as ConnectionLost
from ._errors import Forbidden as Forbidden
from ._errors import InternalError as InternalError
from ._errors import NexusError as NexusError
from ._errors import ProtocolError as ProtocolError
from ._errors import SessionExpired as SessionExpired
from ._errors import SessionNotFound as SessionNotFound
from ._errors import Timeout as Timeout
from ._errors import TooLarge as TooLarge
from ._errors import Unauthorized as Unauthorized
from ._errors import Unavailable as Unavailable
from ._errors import UnsupportedVersion as UnsupportedVersion
from ._exit_codes import EXIT_CODE_DESCRIPTIONS as EXIT_CODE_DESCRIPTIONS
from ._exit_codes import ExitCode as ExitCode
from ._exit_codes import exit_code_for as exit_code_for
from ._render import parse_duration as parse_duration
from ._render import parse_value as parse_value
from ._transport import Target as Target
from ._transport import default_target as default_target
from ._types import Entry as Entry
from ._types import Renewal as Renewal
from ._types import SessionInfo as SessionInfo
from ._types import SessionPage as SessionPage
from ._types import SessionState as SessionState
from ._types import Transition as Transition
from ._types import WriteResult as WriteResult
from ._version import __version__ as __version__
from ._watch import Watch as Watch
from ._watch import WatchStatistics as WatchStatistics
from ._worker import Retry as Retry
from ._worker import RunContext as RunContext
from ._worker import SyncRunContext as SyncRunContext
from ._worker import Worker as Worker
from ._worker import steps as steps
