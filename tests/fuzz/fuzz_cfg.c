/* fuzz_cfg.c - libFuzzer target: cfg.json text in both layouts we read.
 * Whatever the outcome, clearing the config must free everything it owns. */
#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sae_format formats[] = {SAE_FORMAT_SAELENS, SAE_FORMAT_SPARSIFY};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        sae_config cfg;
        sae_error err;
        (void)sae_config_parse((const char *)data, size, formats[i], "<fuzz>", &cfg, &err);
        sae_config_clear(&cfg);
    }
    return 0;
}
