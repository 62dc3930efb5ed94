"""Several daemons, one set of sessions: the cluster around the Redis engine
(membership and leases, the link between daemons, forwarding to a session's
owner). See `_node` for the whole, README "Scale out" for its use."""

from ._forward import Forwarder as Forwarder
from ._link import Link as Link
from ._link import LinkSeal as LinkSeal
from ._membership import Membership as Membership
from ._node import ClusterNode as ClusterNode
from ._node import node_id as node_id
from ._node import open_cluster as open_cluster
