// tb_main.cpp -- C-simulation test bench for ccflow_step() (copied by ccflow from hls/tb_main.cpp).
//
// Usage:   ccflow_csim [TOKENS]        TOKENS: a file; none or "-" reads stdin
// Input:   whitespace-separated integers. A token id 0..VOCAB-1 runs one step;
//          -1 resets the state (activation memory, cell state, saturation
//          counter) before the next step. The first step always resets, as the
//          hardware's power-up reset does.
// Output:  line 1:  "ccflow-hls-csim vocab=V emsize=E act_size=A tiles=T blocks=B"
//          then one line per step:  "<sat_count> <logit_0> ... <logit_{V-1}>"
//          (sat_count = run-time saturation events since the last reset; logits
//          as signed integers in Q.LOGIT_FRAC). Exit status 0, or 2 on bad input.
#include <cstdio>
#include <cstring>

#include "ccflow.h"

int main(int argc, char **argv) {
  using namespace ccflow;
  std::FILE *in = stdin;
  if (argc > 2) {
    std::fprintf(stderr, "usage: %s [TOKENS|-]\n", argv[0]);
    return 2;
  }
  if (argc == 2 && std::strcmp(argv[1], "-") != 0) {
    in = std::fopen(argv[1], "r");
    if (!in) {
      std::fprintf(stderr, "ccflow-hls-csim: cannot open %s\n", argv[1]);
      return 2;
    }
  }
  std::printf("ccflow-hls-csim vocab=%d emsize=%d act_size=%d tiles=%d blocks=%d\n", VOCAB, EMSIZE,
              ACT_SIZE, N_TILES, N_BLOCKS);

  static logit_t logits[VOCAB];
  sat_count_t sat = 0;
  bool reset = true;
  long value = 0;
  long step = 0;
  int got;
  while ((got = std::fscanf(in, "%ld", &value)) == 1) {
    if (value == -1) {
      reset = true;
      continue;
    }
    if (value < 0 || value >= VOCAB) {
      std::fprintf(stderr, "ccflow-hls-csim: input %ld: token id %ld is out of range 0..%d\n", step, value,
                   VOCAB - 1);
      return 2;
    }
    ccflow_step(tok_t(value), reset, logits, &sat);
    reset = false;
    std::printf("%llu", static_cast<unsigned long long>(sat));
    for (int v = 0; v < VOCAB; ++v) {
      std::printf(" %ld", static_cast<long>(logits[v]));
    }
    std::printf("\n");
    ++step;
  }
  if (got != EOF) {
    std::fprintf(stderr, "ccflow-hls-csim: input after %ld steps is not an integer\n", step);
    return 2;
  }
  if (in != stdin) {
    std::fclose(in);
  }
  return 0;
}
