// The HDF5 checkpoint format: round trips, the public root-attribute contract, checksums and
// the distinct errors for missing / foreign / newer / damaged files.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <random>

#include "checkpoint/format_reader.h"
#include "checkpoint/h5_check.h"
#include "checkpoint/sidecar.h"
#include "tests/checkpoint/ckpt_fixtures.h"
#include "tests/test_util.h"

namespace ddp::ckpt {
namespace {

using test::sample_checkpoint;

// Runs f, expecting a ddp::Error of `kind` whose message contains `needle`.
template <typename F>
void expect_error(F&& f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected " << error_kind_name(kind) << " containing \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

void expect_same(const Checkpoint& a, const Checkpoint& b) {
  const CheckpointMeta &x = a.meta, &y = b.meta;
  EXPECT_EQ(x.format_version, y.format_version);
  EXPECT_EQ(x.global_step, y.global_step);
  EXPECT_EQ(x.epoch, y.epoch);
  EXPECT_EQ(x.batch_in_epoch, y.batch_in_epoch);
  EXPECT_EQ(x.samples_in_epoch, y.samples_in_epoch);
  EXPECT_EQ(x.world_size, y.world_size);
  EXPECT_EQ(x.batch_size, y.batch_size);
  EXPECT_EQ(x.weights_only, y.weights_only);
  EXPECT_EQ(x.ddp_runtime_version, y.ddp_runtime_version);
  EXPECT_EQ(x.torch_version, y.torch_version);
  EXPECT_EQ(x.created_utc, y.created_utc);
  EXPECT_EQ(x.config_yaml, y.config_yaml);
  EXPECT_EQ(x.hparams_json, y.hparams_json);
  EXPECT_EQ(x.fingerprint, y.fingerprint);
  EXPECT_EQ(x.optimizer_json, y.optimizer_json);
  EXPECT_EQ(x.scheduler_json, y.scheduler_json);
  EXPECT_EQ(x.callbacks_json, y.callbacks_json);
  EXPECT_EQ(x.metrics, y.metrics);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    SCOPED_TRACE(a.tensors[i].path);
    EXPECT_EQ(a.tensors[i].path, b.tensors[i].path);  // write order is kept
    EXPECT_EQ(a.tensors[i].dtype, b.tensors[i].dtype);
    EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape);
    EXPECT_EQ(a.tensors[i].data, b.tensors[i].data);
    EXPECT_EQ(checksum_bytes(a.tensors[i].data.data(), a.tensors[i].data.size()),
              b.tensors[i].checksum);
  }
  ASSERT_EQ(a.ranks.size(), b.ranks.size());
  for (size_t i = 0; i < a.ranks.size(); ++i) {
    EXPECT_EQ(a.ranks[i].rank, b.ranks[i].rank);
    EXPECT_EQ(a.ranks[i].cpu_rng, b.ranks[i].cpu_rng);
    EXPECT_EQ(a.ranks[i].cuda_rng, b.ranks[i].cuda_rng);
    EXPECT_EQ(a.ranks[i].sampler_epoch, b.ranks[i].sampler_epoch);
    EXPECT_EQ(a.ranks[i].sampler_index, b.ranks[i].sampler_index);
  }
}

TEST(CheckpointFormat, RoundTripEveryDtypeScalarEmptyAndNested) {
  const std::string dir = ddp::test::temp_dir("ckpt-roundtrip");
  const Checkpoint c = sample_checkpoint();
  const std::string path = dir + "/plain.h5";
  test::write_checkpoint_file(path, c);
  const Checkpoint back = read_checkpoint(path);
  expect_same(c, back);
  EXPECT_FALSE(back.verified_file);  // written, never committed: no sidecar
  EXPECT_FALSE(back.meta.hdf5_version.empty());  // filled with the library's version

  test::save_checkpoint(dir, "step=100.h5", c);
  const Checkpoint committed = read_checkpoint(dir + "/step=100.h5");
  expect_same(c, committed);
  EXPECT_TRUE(committed.verified_file);
  EXPECT_EQ(read_meta(path).global_step, 100);
  std::vector<std::string> expected_paths;
  for (const auto& t : c.tensors) expected_paths.push_back(t.path);
  EXPECT_EQ(list_tensors(path), expected_paths);
}

TEST(CheckpointFormat, ReadOptionsSelectWhatIsLoaded) {
  const std::string dir = ddp::test::temp_dir("ckpt-options");
  test::write_checkpoint_file(dir + "/a.h5", sample_checkpoint());
  ReadOptions o;
  o.include_optimizer = false;
  o.include_ranks = false;
  Checkpoint c = read_checkpoint(dir + "/a.h5", o);
  EXPECT_EQ(c.tensors.size(), 9u);
  EXPECT_TRUE(c.ranks.empty());
  o = ReadOptions{};
  o.path_prefix = "model/layers.0.";
  c = read_checkpoint(dir + "/a.h5", o);
  ASSERT_EQ(c.tensors.size(), 2u);
  EXPECT_EQ(c.tensors[0].path, "model/layers.0.weight");
  EXPECT_EQ(c.ranks.size(), 2u);
}

// The public contract: int64 scalar root attributes readable by any HDF5 client.
TEST(CheckpointFormat, RootAttributesArePlainInt64Scalars) {
  const std::string dir = ddp::test::temp_dir("ckpt-attrs");
  const std::string path = dir + "/a.h5";
  test::write_checkpoint_file(path, sample_checkpoint(1234));
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  for (const auto& [name, value] : std::map<std::string, int64_t>{
           {"format_version", kFormatVersion}, {"global_step", 1234}, {"epoch", 24},
           {"world_size", 2}}) {
    const hid_t a = H5Aopen(f, name.c_str(), H5P_DEFAULT);
    ASSERT_GE(a, 0) << name;
    const hid_t t = H5Aget_type(a);
    EXPECT_EQ(H5Tget_class(t), H5T_INTEGER) << name;
    EXPECT_EQ(H5Tget_size(t), 8u) << name;
    int64_t v = 0;
    EXPECT_GE(H5Aread(a, H5T_NATIVE_INT64, &v), 0);
    EXPECT_EQ(v, value) << name;
    H5Tclose(t);
    H5Aclose(a);
  }
  EXPECT_GT(H5Lexists(f, "model", H5P_DEFAULT), 0);
  const hid_t d = H5Dopen2(f, "/model/layers.0.weight", H5P_DEFAULT);
  ASSERT_GE(d, 0);
  const hid_t s = H5Dget_space(d);
  hsize_t dims[2] = {0, 0};
  EXPECT_EQ(H5Sget_simple_extent_ndims(s), 2);
  H5Sget_simple_extent_dims(s, dims, nullptr);
  EXPECT_EQ(dims[0], 4u);
  EXPECT_EQ(dims[1], 3u);
  H5Sclose(s);
  H5Dclose(d);
  H5Fclose(f);
}

TEST(CheckpointFormat, ReadableByH5py) {
  const std::string dir = ddp::test::temp_dir("ckpt-h5py");
  const std::string path = dir + "/a.h5";
  test::write_checkpoint_file(path, sample_checkpoint(77));
  // Debian's python3-h5py belongs to /usr/bin/python3, which a PATH python3 may shadow.
  std::string python;
  for (const char* candidate : {"/usr/bin/python3", "python3"}) {
    if (ddp::test::run_command(std::string(candidate) + " -c 'import h5py'").exit_code == 0) {
      python = candidate;
      break;
    }
  }
  if (python.empty()) GTEST_SKIP() << "python3-h5py not installed";
  const auto r = ddp::test::run_command(
      python + " -c 'import h5py; f = h5py.File(\"" + path + "\", \"r\"); "
      "a = f[\"/\"].attrs; w = f[\"model/layers.0.weight\"]; "
      "print(int(a[\"format_version\"]), int(a[\"global_step\"]), int(a[\"epoch\"]), "
      "int(a[\"world_size\"]), w.shape, w.dtype, w.attrs[\"dtype\"], float(w[1, 0]), "
      "f[\"model/emb.weight\"].attrs[\"dtype\"], float(f[\"metrics\"].attrs[\"val_loss\"]))'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "1 77 1 2 (4, 3) float32 float32 1.75 float16 0.25\n");
}

TEST(CheckpointFormat, StreamingPiecesOfAnySizeMatchOneWrite) {
  const std::string dir = ddp::test::temp_dir("ckpt-stream");
  const std::vector<std::vector<int64_t>> shapes = {{}, {7}, {3, 5}, {2, 3, 4}, {2, 1, 3, 5},
                                                    {3, 0, 2}, {4, 4, 4}};
  std::mt19937 rng(7);
  CheckpointMeta meta;
  FileWriter w(dir + "/s.h5", meta);
  std::vector<TensorEntry> expected;
  for (size_t i = 0; i < shapes.size(); ++i) {
    for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kFloat16}) {
      TensorEntry t = test::make_tensor(fmt::format("model/t{}_{}", i, dtype_name(dtype)), dtype,
                                        shapes[i], 3.0 + i);
      w.begin_tensor(t.path, t.dtype, t.shape, checksum_bytes(t.data.data(), t.data.size()));
      size_t pos = 0;
      while (pos < t.data.size()) {  // pieces of 1..13 bytes: split elements and rows
        const size_t n = std::min<size_t>(t.data.size() - pos, 1 + rng() % 13);
        w.append_tensor_data(t.data.data() + pos, n);
        pos += n;
      }
      EXPECT_EQ(w.end_tensor(), checksum_bytes(t.data.data(), t.data.size()));
      expected.push_back(std::move(t));
    }
  }
  w.close();
  const Checkpoint back = read_checkpoint(dir + "/s.h5");
  ASSERT_EQ(back.tensors.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(back.tensors[i].data, expected[i].data) << expected[i].path;
    EXPECT_EQ(back.tensors[i].shape, expected[i].shape) << expected[i].path;
  }
}

TEST(CheckpointFormat, WriterRejectsBadInput) {
  const std::string dir = ddp::test::temp_dir("ckpt-bad-input");
  FileWriter w(dir + "/bad.h5", CheckpointMeta{});
  TensorEntry t = test::make_tensor("model/w", DType::kFloat32, {2, 2});
  TensorEntry short_t = t;
  short_t.data.resize(12);
  expect_error([&] { w.add_tensor(short_t); }, ErrorKind::kInvalidArgument, "needs 16 bytes, got 12");
  TensorEntry long_t = t;
  long_t.path = "model/w2";
  long_t.data.resize(20);
  expect_error([&] { w.add_tensor(long_t); }, ErrorKind::kInvalidArgument, "holds 16 bytes");
  for (const std::string bad : {"", "w", "model//w", "model/./w", "ranks/0/x", "meta/x", "/model/w"}) {
    TensorEntry b = t;
    b.path = bad;
    expect_error([&] { w.add_tensor(b); }, ErrorKind::kInvalidArgument, "tensor path");
  }
  w.add_tensor(test::make_tensor("model/ok", DType::kFloat32, {2}));
  expect_error([&] { w.add_tensor(test::make_tensor("model/ok", DType::kFloat32, {2})); },
               ErrorKind::kInvalidArgument, "written twice");
  expect_error([&] { w.add_tensor(test::make_tensor("model/ok/x", DType::kFloat32, {2})); },
               ErrorKind::kInvalidArgument, "already a tensor");
  TensorEntry wrong_sum = test::make_tensor("model/sum", DType::kFloat32, {2});
  wrong_sum.checksum = 12345;
  expect_error([&] { w.add_tensor(wrong_sum); }, ErrorKind::kInternal, "memory corruption");
}

TEST(CheckpointFormat, WriterErrorNamesCallFileAndHdf5Message) {
  expect_error([] { FileWriter w("/nonexistent-dir/x.h5", CheckpointMeta{}); },
               ErrorKind::kIOError, "H5Fcreate");
  expect_error([] { FileWriter w("/nonexistent-dir/x.h5", CheckpointMeta{}); },
               ErrorKind::kIOError, "/nonexistent-dir/x.h5");
  // A system error is named by the system's words and errno, not HDF5's stack.
  expect_error([] { FileWriter w("/nonexistent-dir/x.h5", CheckpointMeta{}); },
               ErrorKind::kIOError, "No such file or directory (errno 2)");
}

TEST(CheckpointFormat, FlippedDataByteIsCorruption) {
  const std::string dir = ddp::test::temp_dir("ckpt-flip");
  test::save_checkpoint(dir, "good.h5", sample_checkpoint());
  const std::string bad = dir + "/bad.h5";
  test::copy_file(dir + "/good.h5", bad);
  test::copy_file(dir + "/good.h5.sum", bad + ".sum");
  const uint64_t offset = dataset_file_offset(bad, "model/layers.0.weight");
  test::flip_byte(bad, offset + 5);

  // The whole-file check catches it before HDF5 opens the file.
  expect_error([&] { read_checkpoint(bad); }, ErrorKind::kCorruption, "checksum mismatch: recorded");
  // Without it, the dataset's own checksum names the dataset.
  ReadOptions no_file_check;
  no_file_check.verify_file_checksum = false;
  expect_error([&] { read_checkpoint(bad, no_file_check); }, ErrorKind::kCorruption,
               "dataset '/model/layers.0.weight' is corrupt");
  default_file_system().remove(bad + ".sum");
  const VerifyResult v = verify_file(bad);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error->kind(), ErrorKind::kCorruption);
  EXPECT_NE(std::string(v.error->what()).find("/model/layers.0.weight"), std::string::npos);
  EXPECT_TRUE(verify_file(dir + "/good.h5").ok());
  EXPECT_TRUE(verify_file(dir + "/good.h5").verified_file);
}

TEST(CheckpointFormat, StoredChecksumIsKeptAndStillVerifiedOnLoad) {
  // Checksum::kStore (rank 0 writing another rank's tensor): the sender's checksum becomes the
  // dataset's without rank 0 hashing the bytes; a transfer that changed them is then caught by
  // every reader, naming the dataset.
  const std::string dir = ddp::test::temp_dir("ckpt-stored-sum");
  const std::vector<uint8_t> sent = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> arrived = sent;
  arrived[3] ^= 0x40;
  const uint64_t sum = checksum_bytes(sent.data(), sent.size());
  for (const bool changed : {false, true}) {
    const std::string path = dir + (changed ? "/changed.h5" : "/same.h5");
    {
      FileWriter w(path, sample_checkpoint().meta);
      w.begin_tensor("model/w", DType::kUInt8, {8}, sum, FileWriter::Checksum::kStore);
      w.append_tensor_data(changed ? arrived.data() : sent.data(), 4);
      w.append_tensor_data((changed ? arrived.data() : sent.data()) + 4, 4);
      EXPECT_EQ(w.end_tensor(), sum);
      w.close();
    }
    const VerifyResult v = verify_file(path);
    if (!changed) {
      EXPECT_TRUE(v.ok());
      EXPECT_EQ(FileReader(path).read_tensor("model/w").data, sent);
      continue;
    }
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.error->kind(), ErrorKind::kCorruption);
    EXPECT_NE(std::string(v.error->what()).find("/model/w"), std::string::npos) << v.error->what();
  }
  // The default (kVerify) still refuses bytes that do not match at write time.
  FileWriter w(dir + "/verify.h5", sample_checkpoint().meta);
  w.begin_tensor("model/w", DType::kUInt8, {8}, sum);
  w.append_tensor_data(arrived.data(), arrived.size());
  expect_error([&] { w.end_tensor(); }, ErrorKind::kInternal, "memory corruption");
}

TEST(CheckpointFormat, AnyFlippedByteOrTruncationIsDetectedWithSidecar) {
  const std::string dir = ddp::test::temp_dir("ckpt-fuzz");
  test::save_checkpoint(dir, "good.h5", sample_checkpoint());
  const std::string good = test::slurp(dir + "/good.h5");
  const std::string bad = dir + "/bad.h5";
  test::copy_file(dir + "/good.h5.sum", bad + ".sum");
  std::mt19937_64 rng(42);
  for (int i = 0; i < 60; ++i) {
    std::string bytes = good;
    if (i % 3 == 0) {
      bytes.resize(rng() % bytes.size());
    } else {
      bytes[rng() % bytes.size()] ^= static_cast<char>(1 + rng() % 255);
    }
    test::spit(bad, bytes);
    const VerifyResult v = verify_file(bad);
    ASSERT_FALSE(v.ok()) << "damage " << i << " not detected";
    EXPECT_EQ(v.error->kind(), ErrorKind::kCorruption) << v.error->what();
  }
}

TEST(CheckpointFormat, TruncatedWithoutSidecarIsCorruption) {
  const std::string dir = ddp::test::temp_dir("ckpt-trunc");
  test::write_checkpoint_file(dir + "/a.h5", sample_checkpoint());
  const std::string bytes = test::slurp(dir + "/a.h5");
  test::spit(dir + "/a.h5", bytes.substr(0, bytes.size() / 2));
  expect_error([&] { read_checkpoint(dir + "/a.h5"); }, ErrorKind::kCorruption, "a.h5");
}

TEST(CheckpointFormat, DistinctErrorsForMissingForeignAndNewerFiles) {
  const std::string dir = ddp::test::temp_dir("ckpt-foreign");
  expect_error([&] { read_checkpoint(dir + "/missing.h5"); }, ErrorKind::kNotFound,
               "does not exist");
  expect_error([&] { read_meta(dir + "/missing.h5"); }, ErrorKind::kNotFound, "does not exist");

  test::spit(dir + "/text.h5", "model:\n  name: mlp\n");
  expect_error([&] { read_checkpoint(dir + "/text.h5"); }, ErrorKind::kInvalidArgument,
               "not an HDF5 file");

  const std::string foreign = dir + "/foreign.h5";
  const hid_t f = H5Fcreate(foreign.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  H5Fclose(f);
  expect_error([&] { read_checkpoint(foreign); }, ErrorKind::kInvalidArgument,
               "not a ddp-runtime checkpoint");

  Checkpoint newer = sample_checkpoint();
  newer.meta.format_version = kFormatVersion + 1;
  test::write_checkpoint_file(dir + "/newer.h5", newer);
  expect_error([&] { read_checkpoint(dir + "/newer.h5"); }, ErrorKind::kNewerVersion,
               fmt::format("written by a newer ddp-runtime (format {}, this build reads up to {})",
                           kFormatVersion + 1, kFormatVersion));
}

TEST(CheckpointFormat, AbandonedWriterLeavesAFileThatFailsVerification) {
  const std::string dir = ddp::test::temp_dir("ckpt-abandon");
  {
    FileWriter w(dir + "/x.h5", sample_checkpoint().meta);
    w.begin_tensor("model/w", DType::kFloat32, {4});
    w.append_tensor_data("abcd", 4);  // abandoned mid-tensor (e.g. a peer rank failed)
  }  // the destructor frees the file's bytes (a full disk must not fail the close) and closes
  // What is left is never mistaken for valid data.
  const VerifyResult v = verify_file(dir + "/x.h5");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error->kind(), ErrorKind::kCorruption) << v.error->what();
}

TEST(CheckpointFormat, WeightsOnlyCheckpoint) {
  const std::string dir = ddp::test::temp_dir("ckpt-weights");
  Checkpoint c = sample_checkpoint();
  c.meta.weights_only = true;
  c.ranks.clear();
  c.tensors.resize(9);  // model/* only
  test::write_checkpoint_file(dir + "/w.h5", c);
  const Checkpoint back = read_checkpoint(dir + "/w.h5");
  EXPECT_TRUE(back.meta.weights_only);
  expect_same(c, back);
}

}  // namespace
}  // namespace ddp::ckpt
