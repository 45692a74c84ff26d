/* test_sbuf - saed's response builder: sbuf_int against snprintf("%lld") at
 * the edges and on random values, appended after other bytes. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sbuf.h"

static void check_int(long long v)
{
    sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "x");
    sbuf_int(&b, v);
    char want[32];
    snprintf(want, sizeof want, "x%lld", v);
    size_t n;
    char *got = sbuf_take(&b, &n);
    CHECK(got && n == strlen(want) && !strcmp(got, want));
    if (got && strcmp(got, want))
        printf("sbuf_int(%lld): \"%s\", want \"%s\"\n", v, got, want);
    free(got);
}

int main(void)
{
    const long long edges[] = {0, 1, -1, 9, 10, -10, 99, 100, 2147483647, -2147483648LL,
                               LLONG_MAX, LLONG_MIN, LLONG_MIN + 1};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        check_int(edges[i]);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 100000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        check_int((long long)(s >> (s & 63))); /* every magnitude, both signs */
    }
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all sbuf checks passed\n");
    return 0;
}
