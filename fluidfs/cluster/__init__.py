"""The cluster cache: the caches of all members serving a dataset act as one (peer tier).

Modules: ``hashing`` (weighted rendezvous owners), ``membership`` (members, peers file, view
and history), ``kubediscovery`` (EndpointSlices), ``auth`` (HMAC), ``protocol`` (wire format,
BlockProvider), ``server`` / ``client`` (HTTP/1.1), ``provider`` (blocks from a TieredCache),
``breaker``, ``peertier`` (what the cache asks on a miss), ``handoff`` (graceful leave) and
``node`` (all of it wired for one member).  See docs/cluster.md.
"""
