#include "launcher/train_cli.h"

#include <cstdio>
#include <fstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "collectives/agreement.h"
#include "collectives/error.h"
#include "collectives/mpi_communicator.h"
#include "runtime/config.h"
#include "runtime/trainer.h"

namespace ddp {
namespace {

void write_summary(const std::string& path, const TrainResult& r, const Config& config) {
  nlohmann::json j;
  j["steps"] = r.steps;
  j["epochs"] = r.epochs;
  j["final_train_loss"] = r.final_train_loss;
  j["final_val_loss"] = r.final_val_loss ? nlohmann::json(*r.final_val_loss) : nlohmann::json();
  j["samples_per_s"] = r.samples_per_s;
  j["samples"] = r.samples;
  j["wall_s"] = r.wall_s;
  j["preemption_check_s"] = r.preemption_check_s;
  j["train_loop_s"] = r.train_loop_s;
  j["world_size"] = r.world_size;
  j["backend"] = r.backend;
  j["preempted"] = r.preempted;
  j["model"] = config.model.name;
  j["run_dir"] = r.run_dir;
  j["zero"] = {{"stage", r.zero_stage},
               {"optimizer_state_bytes_max", r.optimizer_state_bytes_max},
               {"optimizer_state_bytes_min", r.optimizer_state_bytes_min},
               {"shard_buffer_bytes", r.shard_buffer_bytes}};
  if (!r.checkpoint_json.empty()) j["checkpoint"] = nlohmann::json::parse(r.checkpoint_json);
  std::ofstream out(path);
  out << j.dump(2) << '\n';
  if (!out) throw Error(ErrorKind::kIOError, fmt::format("cannot write summary '{}'", path));
}

}  // namespace

int train_cli_main(int argc, char** argv) {
  MpiRuntime mpi(&argc, &argv);
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);

  CLI::App app{"ddp-train: data-parallel training over MPI (CPU) or NCCL (GPU).\n"
               "  mpirun -np N ddp-train --config configs/default.yaml [--set key=value ...]"};
  std::string config_path;
  std::vector<std::string> overrides;
  std::string summary_path;
  bool print_config = false;
  app.add_option("-c,--config", config_path, "YAML config file (defaults if omitted)");
  app.add_option("-s,--set", overrides, "override a config value: --set trainer.max_steps=40")
      ->type_name("KEY=VALUE");
  app.add_option("--summary", summary_path, "write a JSON summary of the run to this file");
  std::string resume;
  app.add_option("--resume", resume,
                 "resume from a checkpoint: auto | last | best | none | PATH "
                 "(same as --set checkpoint.resume=...)");
  app.add_flag("--print-config", print_config, "print the effective config and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Every rank parses the same command line, so every rank exits the same way.
    if (world_rank == 0) app.exit(e);
    return e.get_exit_code() == 0 ? kExitOk : kExitInvalidInput;
  }

  std::unique_ptr<MpiCommunicator> comm;
  try {
    comm = std::make_unique<MpiCommunicator>();
    Config config;
    if (!resume.empty()) overrides.push_back("checkpoint.resume=" + resume);
    run_agreed(*comm, "config", [&] { config = load_config(config_path, overrides); });
    comm = std::make_unique<MpiCommunicator>(CommunicatorOptions{config.ddp.timeout_s});
    if (print_config) {
      if (comm->rank() == 0) std::fputs(config.resolved_yaml.c_str(), stdout);
      return kExitOk;
    }
    Trainer trainer(config, *comm);
    const TrainResult result = trainer.fit();
    if (comm->rank() == 0) {
      std::fprintf(stderr,
                   "ddp-train: done: %lld steps, %lld epochs, train_loss %.4f%s, %.0f samples/s, "
                   "%.1f s\n",
                   static_cast<long long>(result.steps), static_cast<long long>(result.epochs),
                   result.final_train_loss,
                   result.final_val_loss ? fmt::format(", val_loss {:.4f}", *result.final_val_loss).c_str()
                                         : "",
                   result.samples_per_s, result.wall_s);
    }
    if (!summary_path.empty()) {
      run_agreed(*comm, "summary", [&] {
        if (comm->rank() == 0) write_summary(summary_path, result, config);
      });
    }
    comm->barrier();
    if (result.preempted) {
      if (comm->rank() == 0) {
        std::fprintf(stderr, "ddp-train: preempted at step %lld; exiting with %lld (resume with "
                     "--resume auto)\n",
                     static_cast<long long>(result.steps),
                     static_cast<long long>(config.preemption.exit_code));
      }
      return static_cast<int>(config.preemption.exit_code);
    }
    return kExitOk;
  } catch (const AgreedError& e) {
    // All ranks hold this error: one message (rank 0), same exit code everywhere.
    if (world_rank == 0) std::fprintf(stderr, "ddp-train: error: %s\n", e.what());
    return exit_code_for(e.kind());
  } catch (const Error& e) {
    std::fprintf(stderr, "ddp-train: error on rank %d: %s\n", world_rank, e.what());
    if (comm && comm->size() > 1) comm->abort(exit_code_for(e.kind()));
    return exit_code_for(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ddp-train: internal error on rank %d: %s\n", world_rank, e.what());
    if (comm && comm->size() > 1) comm->abort(kExitInternal);
    return kExitInternal;
  }
}

}  // namespace ddp
