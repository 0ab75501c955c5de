"""Suite-wide settings."""

from threadpoolctl import threadpool_limits

# On a 2-core machine, multi-threaded BLAS on the small matrices of the head tests is many times
# slower than one thread whenever anything else is running; TensorFlow keeps its own thread pools.
threadpool_limits(1, user_api="blas")
