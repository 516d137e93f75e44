"""A discrete-event simulator of cache-aware scheduling: ``python -m tools.sim``.

- ``trace``        synthetic traces (Poisson arrivals, optionally in bursts over one dataset,
                   log-normal durations, Zipf dataset popularity, GPUs per job in {1, 2, 4, 8},
                   passes from a read rate per GPU), seeded; the "no sharing" trace; JSON load/save
- ``scenario``     JSON/YAML scenario files (cluster, datasets, jobs, policies): the simulator's
                   input that a real run shares, and with measured times the calibration's
- ``cluster``      node caches, chunk ownership (weighted rendezvous), bandwidth shared by flows
- ``datapath``     membership, where each chunk is read from, transfers, warm-ups
- ``engine``       the event loop: arrivals, admission through ``fluidfs.control.sched.ordering``,
                   placement through ``fluidfs.control.sched.placement``, reads, compute, completion
- ``report``       metrics, Markdown tables, JSON, PNG plots
- ``calibrate``    predicted vs measured completion times of a real run (``--calibrate FILE``)
- ``experiments``  the runs behind docs/scheduling.md
- ``cli``          the command line
"""
