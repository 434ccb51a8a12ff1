// xxHash's XXH3, with run-time dispatch to the widest vector unit the CPU has (AVX2 / AVX-512)
// where libxxhash provides it (DDP_XXH3_DISPATCH, set by CMake after a link check): on a large
// buffer about 2x the baseline SSE2 code Debian's library runs otherwise (12.5 vs 5.7 GB/s here),
// with the same digests. Include this instead of <xxhash.h>.
#pragma once

#include <xxhash.h>
#if defined(DDP_XXH3_DISPATCH)
#include <xxh_x86dispatch.h>  // redirects XXH3_64bits / XXH3_64bits_update to the _dispatch ones
#endif
