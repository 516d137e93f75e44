"""fluidfs benchmark suite: fluidfs side by side with s3fs, rclone, direct boto3 and local disk.

Run ``python -m tools.bench --help``; see docs/benchmarks.md for the method and results.
"""
