/* Counts the OpenMP parallel regions a process opens (GNU OpenMP, which torch's CPU wheels
   and their MKL use), for ``python -m benchmarks.under_load --count``:

       gcc -O2 -shared -fPIC -o /tmp/omp_regions.so benchmarks/omp_regions.c -ldl
       LD_PRELOAD=/tmp/omp_regions.so python -m benchmarks.under_load --count

   Every call of GOMP_parallel outside a parallel region adds one to the count; nested ones
   (a team of one thread inside a region) are not counted. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>

typedef void (*parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
static atomic_long regions;

long counted_parallel_regions(void) { return atomic_load(&regions); }

void GOMP_parallel(void (*body)(void *), void *data, unsigned threads, unsigned flags) {
  static parallel_fn real;
  static int (*level)(void);
  if (!real) {
    real = (parallel_fn)dlsym(RTLD_NEXT, "GOMP_parallel");
    level = (int (*)(void))dlsym(RTLD_NEXT, "omp_get_level");
  }
  if (level() == 0) atomic_fetch_add(&regions, 1);
  real(body, data, threads, flags);
}
