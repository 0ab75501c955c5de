"""Suite-wide settings, each one deliberate for the whole run."""

import atexit
import os
import shutil
import tempfile

from threadpoolctl import threadpool_limits

# On a 2-core machine, multi-threaded BLAS on the small matrices of the head tests is many times
# slower than one thread whenever anything else is running; TensorFlow keeps its own thread pools.
threadpool_limits(1, user_api="blas")

# Converted weights and LiteRT conversions go to one temporary cache for the whole run (never the
# user's ~/.cache/featx): shared on purpose, so a backbone converted by one test module is reused by
# the next. Tests that check the cache itself point FEATX_CACHE_DIR at their own folder.
if "FEATX_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="featx-test-cache-")
    os.environ["FEATX_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
