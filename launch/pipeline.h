// qforge pipeline: a campaign as one job. generate -> qat -> ptq -> eval, each unit of work writing under
// output.dir (corpus.h5, qat/<bits>/, ptq/<bits>/, eval/<row>/), skipped when it is complete and was made from the
// same inputs and settings (a fingerprint of both, recorded in output.dir/pipeline/<unit>.json), resumed where it
// stopped after a kill, and redone from scratch when its fingerprint changed. The report (report.md, report.json,
// plots/*.svg) is written at the end (docs/pipeline.md).
#pragma once

#include "launch/commands.h"
#include "launch/pipeline_settings.h"

namespace qforge {

// The `pipeline` command (pipeline_command.cpp).
Command pipeline_command();

}  // namespace qforge
