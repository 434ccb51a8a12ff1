// CheckpointPolicy (Lightning 2.x ModelCheckpoint semantics): triggers, filename templates,
// top-k / last / keep_last_n planning, plan-then-commit, persisted state, option validation.
// The same rules are checked against real Lightning by tests/lightning/.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "checkpoint/checkpoint_policy.h"
#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

CheckpointPolicyOptions opts() {
  CheckpointPolicyOptions o;
  o.dirpath = "/tmp/x";
  o.keep_last_n = 0;
  return o;
}

// A directory that holds what the committed plans wrote and did not delete.
struct Dir {
  std::set<std::string> files;
  ExistsFn exists() {
    return [this](const std::string& n) { return files.count(n) > 0; };
  }
  // Commits the plan as a successful save would: the file, the link, the deletions.
  void apply(CheckpointPolicy& p, const SavePlan& plan) {
    if (plan.empty()) return;
    files.insert(plan.file);
    if (!plan.link_last.empty()) files.insert(plan.link_last);
    for (const auto& f : plan.drop) files.erase(f);
    p.commit(plan);
  }
};

SavePoint at(int64_t step, int64_t epoch, double val_loss) {
  return {step, epoch, {{"val_loss", val_loss}, {"train_loss", 1.0}}};
}

TEST(CheckpointPolicy, TriggersAreMutuallyExclusiveAndEveryNEpochsDefaultsToOne) {
  auto o = opts();
  EXPECT_EQ(CheckpointPolicy(o).every_n_epochs(), 1);  // nothing set: every epoch
  o.every_n_train_steps = 5;
  CheckpointPolicy steps(o);
  EXPECT_EQ(steps.every_n_epochs(), 0);  // another trigger set: no epoch trigger
  EXPECT_FALSE(steps.due_after_batch(4, false));
  EXPECT_TRUE(steps.due_after_batch(10, false));
  o.every_n_epochs = 1;  // both explicitly: Lightning's MisconfigurationException
  try {
    CheckpointPolicy both(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mutually exclusive"), std::string::npos) << e.what();
  }
  o = opts();
  o.train_time_interval_s = 60;
  CheckpointPolicy timed(o);
  EXPECT_EQ(timed.every_n_epochs(), 0);
  EXPECT_TRUE(timed.due_after_batch(11, true));
  EXPECT_FALSE(timed.due_after_batch(11, false));
  o = opts();
  o.enabled = false;
  CheckpointPolicy off(o);
  EXPECT_FALSE(off.due_after_epoch(at(10, 0, 1.0)));
}

TEST(CheckpointPolicy, SaveOnTrainEpochEndFollowsTheValidationSchedule) {
  auto o = opts();
  EXPECT_TRUE(CheckpointPolicy(o, LoopFacts{true, 1, 1.0}).save_on_train_epoch_end());
  EXPECT_FALSE(CheckpointPolicy(o, LoopFacts{true, 1, 0.5}).save_on_train_epoch_end());
  EXPECT_FALSE(CheckpointPolicy(o, LoopFacts{true, 2, 1.0}).save_on_train_epoch_end());
  EXPECT_TRUE(CheckpointPolicy(o, LoopFacts{false, 1, 0.5}).save_on_train_epoch_end());
  o.save_on_train_epoch_end = "false";
  EXPECT_FALSE(CheckpointPolicy(o, LoopFacts{true, 1, 1.0}).save_on_train_epoch_end());
}

TEST(CheckpointPolicy, FilenameTemplates) {
  auto o = opts();
  o.filename = "{epoch}-{step:06d}-{val_loss:.3f}";
  CheckpointPolicy p(o);
  EXPECT_EQ(p.filename(2, 40, {{"val_loss", 0.12345}}), "epoch=2-step=000040-val_loss=0.123.h5");
  EXPECT_EQ(p.filename(0, 1, {}), "epoch=0-step=000001-val_loss=0.000.h5");  // not logged: 0
  EXPECT_EQ(p.filename(0, 1, {}, 2), "epoch=0-step=000001-val_loss=0.000-v2.h5");
  o.filename = "e{epoch}_{val_loss}";
  o.auto_insert_metric_name = false;
  CheckpointPolicy plain(o);
  EXPECT_EQ(plain.filename(3, 9, {{"val_loss", 100.0}}), "e3_100.0.h5");  // Python's repr
  EXPECT_EQ(plain.filename(3, 9, {{"val_loss", 0.1}}), "e3_0.1.h5");
  EXPECT_EQ(CheckpointPolicy(opts()).filename(0, 10, {}), "epoch=0-step=10.h5");  // default
}

TEST(CheckpointPolicy, TopKMinKeepsTheKBestAndDeletesTheEvicted) {
  auto o = opts();
  o.save_top_k = 2;
  o.monitor = "val_loss";
  o.save_last = false;
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_epoch(at(10, 0, 0.5), d.exists()));
  d.apply(p, p.plan_after_epoch(at(20, 1, 0.3), d.exists()));
  // Worse than both: Lightning does not save it at all.
  EXPECT_TRUE(p.plan_after_epoch(at(30, 2, 0.9), d.exists()).empty());
  const SavePlan best = p.plan_after_epoch(at(40, 3, 0.1), d.exists());
  EXPECT_EQ(best.file, "epoch=3-step=40.h5");
  EXPECT_EQ(best.drop, (std::vector<std::string>{"epoch=0-step=10.h5"}));
  d.apply(p, best);
  EXPECT_EQ(d.files, (std::set<std::string>{"epoch=1-step=20.h5", "epoch=3-step=40.h5"}));
  EXPECT_EQ(p.state().best_model_path, "epoch=3-step=40.h5");
  EXPECT_EQ(p.state().kth_best_model_path, "epoch=1-step=20.h5");
  EXPECT_DOUBLE_EQ(*p.state().kth_value, 0.3);
}

TEST(CheckpointPolicy, SaveLastLinksToTheSavedFileOrIsItsOwnFile) {
  auto o = opts();
  o.save_top_k = 1;
  o.monitor = "val_loss";
  o.mode = "max";
  CheckpointPolicy p(o);
  Dir d;
  const SavePlan first = p.plan_after_epoch(at(10, 0, 0.5), d.exists());
  EXPECT_EQ(first.file, "epoch=0-step=10.h5");
  EXPECT_EQ(first.link_last, "last.h5");
  d.apply(p, first);
  const SavePlan worse = p.plan_after_epoch(at(20, 1, 0.1), d.exists());
  EXPECT_EQ(worse.file, "last.h5");  // the top-k did not take it; last still holds the state
  EXPECT_TRUE(worse.link_last.empty());
  EXPECT_TRUE(worse.drop.empty());
  d.apply(p, worse);
  EXPECT_EQ(p.state().best_model_path, "epoch=0-step=10.h5");
  EXPECT_EQ(p.state().last_model_path, "last.h5");
}

TEST(CheckpointPolicy, ACollidingNameIsVersionedNeverOverwrittenByAWorseState) {
  auto o = opts();
  o.filename = "best";
  o.save_top_k = 1;
  o.monitor = "val_loss";
  o.mode = "max";
  o.save_last = false;
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_epoch(at(10, 0, 0.5), d.exists()));
  EXPECT_TRUE(p.plan_after_epoch(at(20, 1, 0.2), d.exists()).empty());  // worse: not written
  const SavePlan better = p.plan_after_epoch(at(30, 2, 0.9), d.exists());
  EXPECT_EQ(better.file, "best.h5");  // replaces the file it evicts
  EXPECT_TRUE(better.drop.empty());
  d.apply(p, better);
  // A name taken by a file the policy does not replace gets -v1.
  o.filename = "{epoch}";
  o.save_top_k = -1;
  o.every_n_epochs = 0;
  o.every_n_train_steps = 5;
  CheckpointPolicy all(o);
  Dir e;
  e.apply(all, all.plan_after_batch(at(5, 0, 0.5), false, e.exists()));
  const SavePlan second = all.plan_after_batch(at(10, 0, 0.4), false, e.exists());
  EXPECT_EQ(second.file, "epoch=0-v1.h5");
  e.apply(all, second);
  EXPECT_EQ(e.files, (std::set<std::string>{"epoch=0.h5", "epoch=0-v1.h5"}));
}

TEST(CheckpointPolicy, NaNRanksWorstAndTiesKeepTheFirst) {
  auto o = opts();
  o.save_top_k = 2;
  o.monitor = "val_loss";
  o.save_last = false;
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_epoch(at(1, 0, NAN), d.exists()));  // fewer than k: saved, as +inf
  EXPECT_TRUE(std::isinf(*p.state().current_score));
  d.apply(p, p.plan_after_epoch(at(2, 1, 0.5), d.exists()));
  EXPECT_EQ(p.state().kth_best_model_path, "epoch=0-step=1.h5");
  EXPECT_TRUE(p.plan_after_epoch(at(3, 2, NAN), d.exists()).empty());  // NaN never better
  d.apply(p, p.plan_after_epoch(at(4, 3, 0.5), d.exists()));  // evicts the NaN one
  // Two equal scores: the k-th best is the first of them; an equal third is not saved.
  EXPECT_EQ(p.state().kth_best_model_path, "epoch=1-step=2.h5");
  EXPECT_EQ(p.state().best_model_path, "epoch=1-step=2.h5");
  EXPECT_TRUE(p.plan_after_epoch(at(5, 4, 0.5), d.exists()).empty());
}

TEST(CheckpointPolicy, WithoutMonitorTheNewestIsBest) {
  auto o = opts();
  o.save_last = false;
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_epoch(at(1, 0, 0), d.exists()));
  const SavePlan next = p.plan_after_epoch(at(2, 1, 0), d.exists());
  EXPECT_EQ(next.drop, (std::vector<std::string>{"epoch=0-step=1.h5"}));
  o.save_top_k = -1;
  CheckpointPolicy all(o);
  Dir e;
  for (int i = 1; i <= 4; ++i) {
    const SavePlan plan = all.plan_after_epoch(at(i, i - 1, 0), e.exists());
    EXPECT_TRUE(plan.drop.empty());
    e.apply(all, plan);
  }
  EXPECT_EQ(e.files.size(), 4u);
}

// Lightning's _last_global_step_saved: once a step is saved, no other hook saves it again.
TEST(CheckpointPolicy, AStepIsSavedOnce) {
  auto o = opts();
  o.every_n_epochs = 0;
  o.every_n_train_steps = 5;
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_batch(at(5, 0, 0.5), false, d.exists()));
  EXPECT_TRUE(p.due_after_epoch(at(5, 0, 0.5)));  // the options alone would save here
  EXPECT_TRUE(p.plan_after_epoch(at(5, 0, 0.5), d.exists()).empty());
  EXPECT_EQ(p.plan_after_epoch(at(6, 0, 0.5), d.exists()).file, "last.h5");
}

TEST(CheckpointPolicy, APlanChangesNothingUntilCommitted) {
  auto o = opts();
  o.save_top_k = 1;
  o.monitor = "val_loss";
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_epoch(at(1, 0, 0.5), d.exists()));
  const std::string before = p.state_json();
  const SavePlan failed = p.plan_after_epoch(at(2, 1, 0.1), d.exists());  // the save fails
  EXPECT_EQ(p.state_json(), before);
  EXPECT_EQ(p.plan_after_epoch(at(2, 1, 0.1), d.exists()).file, failed.file);
  EXPECT_EQ(p.state().best_model_path, "epoch=0-step=1.h5");
}

TEST(CheckpointPolicy, KeepLastNDefersDeletionsWhileAFileIsAmongTheNewest) {
  auto o = opts();
  o.save_last = false;  // top-1 without monitor: Lightning deletes the previous file each time
  o.keep_last_n = 2;
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_epoch(at(1, 0, 0), d.exists()));
  const SavePlan second = p.plan_after_epoch(at(2, 1, 0), d.exists());
  EXPECT_TRUE(second.drop.empty());  // epoch 0's file is one of the two newest
  d.apply(p, second);
  const SavePlan third = p.plan_after_epoch(at(3, 2, 0), d.exists());
  EXPECT_EQ(third.drop, (std::vector<std::string>{"epoch=0-step=1.h5"}));
}

TEST(CheckpointPolicy, AMonitorNeverLoggedWarnsWithTheLoggedKeys) {
  auto o = opts();
  o.monitor = "val_loss";
  CheckpointPolicy p(o);
  const SavePlan plan = p.plan_after_epoch({5, 0, {{"train_loss", 2.0}}}, nullptr);
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_NE(plan.warnings[0].find("[epoch, step, train_loss]"), std::string::npos)
      << plan.warnings[0];
  EXPECT_EQ(plan.file, "last.h5");  // last is still saved
}

TEST(CheckpointPolicy, StateSurvivesAResumeAndOlderTablesLoad) {
  auto o = opts();
  o.save_top_k = 2;
  o.monitor = "val_loss";
  CheckpointPolicy p(o);
  Dir d;
  d.apply(p, p.plan_after_epoch(at(1, 0, 0.2), d.exists()));
  d.apply(p, p.plan_after_epoch(at(2, 1, NAN), d.exists()));
  CheckpointPolicy q(o);
  q.load_state_json(p.state_json());
  EXPECT_EQ(q.state_json(), p.state_json());
  EXPECT_EQ(q.state().best_k_models.size(), 2u);
  EXPECT_TRUE(std::isinf(q.state().best_k_models[1].second));
  // The plan survives the trip to the other ranks.
  const SavePlan plan = q.plan_after_epoch(at(3, 2, 0.1), d.exists());
  const SavePlan back = CheckpointPolicy::plan_from_json(CheckpointPolicy::plan_json(plan, o));
  EXPECT_EQ(back.file, plan.file);
  EXPECT_EQ(back.drop, plan.drop);
  EXPECT_EQ(CheckpointPolicy::to_json(back.after, o), CheckpointPolicy::to_json(plan.after, o));
  // ddp-runtime 0.1's table.
  const PolicyState old = CheckpointPolicy::from_json(
      R"({"best_k": [{"file": "a.h5", "score": 0.1, "step": 3}], "recent": [{"file": "b.h5"}],
          "saved": ["a.h5", "b.h5", "c.h5"], "monitor": "val_loss", "mode": "min"})");
  EXPECT_EQ(old.best_model_path, "a.h5");
  EXPECT_EQ(old.last_model_path, "last.h5");
  EXPECT_EQ(old.retiring, (std::vector<std::string>{"c.h5"}));
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
  o = opts();
  o.filename = "{val_los:.2f}";  // a typo: names nothing that is logged
  try {
    CheckpointPolicy p(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("epoch, step, train_loss, val_loss"), std::string::npos)
        << e.what();
  }
  o = opts();
  o.save_on_train_epoch_end = "sometimes";
  EXPECT_THROW(CheckpointPolicy{o}, Error);
}

}  // namespace
}  // namespace ddp::ckpt
