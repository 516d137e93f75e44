"""A discrete-event simulator of cache-aware scheduling: ``python -m tools.sim``.

- ``trace``        synthetic traces (Poisson arrivals, log-normal durations, Zipf dataset popularity,
                   GPUs per job in {1, 2, 4, 8}), seeded; the "no sharing" trace; JSON load/save
- ``cluster``      the data model: per-node LRU caches forming the cluster cache (owner of a chunk =
                   weighted rendezvous over the dataset's members), bandwidth shared by flows
- ``engine``       the event loop: arrivals, admission through ``fluidfs.control.sched.ordering``,
                   placement through ``fluidfs.control.sched.placement``, reads, compute, completion
- ``report``       metrics, Markdown tables, JSON, PNG plots
- ``calibrate``    predicted vs measured completion times of a real run (``--calibrate FILE``)
- ``experiments``  the runs behind docs/scheduling.md
- ``cli``          the command line
"""
