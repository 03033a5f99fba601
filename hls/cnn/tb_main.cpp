// tb_main.cpp -- C-simulation test bench for ccflow_classify() (copied by ccflow from hls/cnn/).
//
// Usage: ccflow_csim [PIXELS]   (a file; none reads stdin)
// Input: whitespace-separated integers, IN_WORDS pixels per image in the activation
// format; any number of images.
// Output: line 1 "ccflow-hls-cnn-csim classes=C in_words=I tiles=T blocks=B", then one line per
// image: "<sat_count> <logit_0> ... <logit_{C-1}>". Exit status 0, or 2 on bad input.
#include <cstdio>

#include "ccflow.h"

int main(int argc, char **argv) {
  using namespace ccflow;
  if (argc > 2 || (argc == 2 && !std::freopen(argv[1], "r", stdin))) {
    std::fprintf(stderr, "usage: %s [PIXELS] (a readable file of integers)\n", argv[0]);
    return 2;
  }
  std::printf("ccflow-hls-cnn-csim classes=%d in_words=%d tiles=%d blocks=%d\n", CLASSES, IN_WORDS, N_TILES,
              N_BLOCKS);
  static act_t pixels[IN_WORDS];
  static logit_t logits[CLASSES];
  long value = 0;
  long image = 0;
  for (;;) {
    int i = 0;
    for (; i < IN_WORDS && std::scanf("%ld", &value) == 1; ++i) {
      if (value < -(1L << (ACT_BITS - 1)) || value >= (1L << (ACT_BITS - 1))) {
        std::fprintf(stderr, "ccflow-hls-cnn-csim: image %ld pixel %d: %ld is not an ACT_BITS value\n", image, i,
                     value);
        return 2;
      }
      pixels[i] = act_t(value);
    }
    if (i == 0) break;
    if (i < IN_WORDS) {
      std::fprintf(stderr, "ccflow-hls-cnn-csim: image %ld has %d of %d pixels\n", image, i, IN_WORDS);
      return 2;
    }
    sat_count_t sat = 0;
    ccflow_classify(pixels, logits, &sat);
    std::printf("%llu", static_cast<unsigned long long>(sat));
    for (int v = 0; v < CLASSES; ++v) std::printf(" %ld", static_cast<long>(logits[v]));
    std::printf("\n");
    ++image;
  }
  return 0;
}
