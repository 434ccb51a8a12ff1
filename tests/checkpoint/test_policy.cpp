// CheckpointPolicy (ModelCheckpoint semantics): triggers, filename templates, top-k / last /
// keep_last_n retention bookkeeping, its persisted state, and option validation.
#include <gtest/gtest.h>

#include <algorithm>

#include "checkpoint/checkpoint_policy.h"
#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

CheckpointPolicyOptions opts() {
  CheckpointPolicyOptions o;
  o.dirpath = "/tmp/x";
  o.every_n_epochs = 0;
  return o;
}

TEST(CheckpointPolicy, Triggers) {
  auto o = opts();
  o.every_n_train_steps = 5;
  o.train_time_interval_s = 60;
  o.every_n_epochs = 2;
  CheckpointPolicy p(o);
  EXPECT_FALSE(p.due_after_step(4, 1.0));
  EXPECT_TRUE(p.due_after_step(10, 1.0));
  EXPECT_TRUE(p.due_after_step(11, 61.0));  // time-based
  EXPECT_FALSE(p.due_after_epoch(1));
  EXPECT_TRUE(p.due_after_epoch(2));
  o.enabled = false;
  CheckpointPolicy off(o);
  EXPECT_FALSE(off.due_after_step(10, 100.0));
  EXPECT_FALSE(off.due_after_epoch(2));
}

TEST(CheckpointPolicy, FilenameTemplates) {
  auto o = opts();
  o.filename = "epoch={epoch}-step={step:06d}-val_loss={val_loss:.3f}";
  CheckpointPolicy p(o);
  EXPECT_EQ(p.filename(2, 40, {{"val_loss", 0.12345}}), "epoch=2-step=000040-val_loss=0.123.h5");
  EXPECT_EQ(p.filename(0, 1, {}), "epoch=0-step=000001-val_loss=na.h5");  // not computed yet
}

TEST(CheckpointPolicy, TopKByMonitorKeepsTheBestAndTheNewest) {
  auto o = opts();
  o.save_top_k = 2;
  o.monitor = "val_loss";
  o.mode = "min";
  o.keep_last_n = 0;
  CheckpointPolicy p(o);
  EXPECT_TRUE(p.on_committed("a.h5", 1, {{"val_loss", 0.5}}).empty());
  EXPECT_TRUE(p.on_committed("b.h5", 2, {{"val_loss", 0.3}}).empty());
  // c is worse than both, but it is the newest: kept (latest.json points at it) for now.
  EXPECT_TRUE(p.on_committed("c.h5", 3, {{"val_loss", 0.9}}).empty());
  // d is the best: a and c fall out (c is no longer the newest, a is third best).
  auto dropped = p.on_committed("d.h5", 4, {{"val_loss", 0.1}});
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, (std::vector<std::string>{"a.h5", "c.h5"}));
  ASSERT_TRUE(p.best());
  EXPECT_EQ(p.best()->file, "d.h5");
}

TEST(CheckpointPolicy, ModeMaxAndKeepLastN) {
  auto o = opts();
  o.save_top_k = 1;
  o.monitor = "val_loss";
  o.mode = "max";
  o.keep_last_n = 2;
  CheckpointPolicy p(o);
  p.on_committed("s1.h5", 1, {{"val_loss", 5}});
  p.on_committed("s2.h5", 2, {{"val_loss", 1}});
  p.on_committed("s3.h5", 3, {{"val_loss", 2}});
  // Kept: s1 (best, max), s2 and s3 (two newest). Next save drops s2.
  EXPECT_EQ(p.on_committed("s4.h5", 4, {{"val_loss", 3}}), (std::vector<std::string>{"s2.h5"}));
  EXPECT_EQ(p.best()->file, "s1.h5");
}

TEST(CheckpointPolicy, WithoutMonitorNewestIsBestAndTopKMinusOneKeepsAll) {
  auto o = opts();
  o.save_top_k = 1;
  o.keep_last_n = 0;
  CheckpointPolicy p(o);
  p.on_committed("x1.h5", 1, {});
  EXPECT_EQ(p.on_committed("x2.h5", 2, {}), (std::vector<std::string>{"x1.h5"}));
  o.save_top_k = -1;
  CheckpointPolicy all(o);
  for (int i = 1; i <= 5; ++i) {
    EXPECT_TRUE(all.on_committed("y" + std::to_string(i) + ".h5", i, {}).empty());
  }
}

TEST(CheckpointPolicy, StateSurvivesAResume) {
  auto o = opts();
  o.save_top_k = 1;
  o.monitor = "val_loss";
  o.keep_last_n = 0;
  CheckpointPolicy p(o);
  p.on_committed("a.h5", 1, {{"val_loss", 0.2}});
  p.on_committed("b.h5", 2, {{"val_loss", 0.4}});
  CheckpointPolicy q(o);
  q.load_state_json(p.state_json());
  EXPECT_EQ(q.best()->file, "a.h5");
  // After the resume the bookkeeping continues: a better c replaces a, b (not newest) goes.
  auto dropped = q.on_committed("c.h5", 3, {{"val_loss", 0.1}});
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, (std::vector<std::string>{"a.h5", "b.h5"}));
  EXPECT_THROW(q.load_state_json("{not json"), Error);
}

TEST(CheckpointPolicy, ContradictoryOptionsAreRejected) {
  auto o = opts();
  o.save_top_k = 3;  // no monitor
  try {
    CheckpointPolicy p(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint.monitor"), std::string::npos) << e.what();
  }
  o = opts();
  o.mode = "median";
  EXPECT_THROW(CheckpointPolicy{o}, Error);
  o = opts();
  o.filename = "a/{step}";
  EXPECT_THROW(CheckpointPolicy{o}, Error);
  o = opts();
  o.filename = "step={step";
  EXPECT_THROW(CheckpointPolicy{o}, Error);
}

}  // namespace
}  // namespace ddp::ckpt
