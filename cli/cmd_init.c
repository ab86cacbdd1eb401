/* placeholder until the module lands; replaced by the real command. */
#include "vlm_cli.h"
int cmd_init(int argc, char **argv) {
  (void)argc;
  vlm_cli_error(argv[0], "not available yet");
  return VLM_EXIT_RUNTIME;
}
