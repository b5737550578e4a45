"""The host side: artifacts (tarball + manifest) in, an atomically switched live tree at <root>/sw out.

One module per concern: ``layout`` (where things live), ``source`` (fetch), ``verify``,
``extract`` (safe streaming extraction), ``relocate``, ``space``, ``inuse``, ``lock``,
``switch`` (ramdisk copy and atomic symlink switch) and ``commands`` (what the CLI calls).
Standard library and zstandard only, so a notebook host installs ``swstack`` alone.
"""
