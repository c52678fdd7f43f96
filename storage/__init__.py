"""The only package that knows the on-disk layout: Zarr store, Parquet manifest, torch Dataset, KITTI-DC I/O."""
