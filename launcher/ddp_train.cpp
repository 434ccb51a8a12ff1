// ddp-train: the data-parallel training job. See launcher/train_cli.h.
#include "launcher/train_cli.h"

int main(int argc, char** argv) { return ddp::train_cli_main(argc, argv); }
