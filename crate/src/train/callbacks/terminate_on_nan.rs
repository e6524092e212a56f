//! Keras's `TerminateOnNaN`, which `fit` adds unless given one.

use super::{BatchLogs, Callback};
use crate::model::Sequential;
use anyhow::{bail, Result};
use candle_core::Tensor;

/// Keras's `TerminateOnNaN`, and more: a step whose loss, gradients or
/// updated weights are not finite stops training, and the weights and the
/// optimizer's state go back to those of the end of the last epoch. (A NaN
/// can leave the loss finite: the ReLU turns it into 0, and `0 · NaN` puts
/// it into the gradients, so the weights are checked as well.)
#[derive(Default)]
pub struct TerminateOnNaN {
    weights: Vec<Tensor>,
    optimizer: Option<(u64, Vec<(String, Tensor)>)>,
}

impl Callback for TerminateOnNaN {
    fn on_epoch_begin(&mut self, model: &mut Sequential, _: usize) -> Result<()> {
        self.weights = model.params.snapshot()?;
        // Copies: the optimizer updates its state in place.
        self.optimizer = match &model.optimizer {
            Some(o) => Some((
                o.iterations(),
                o.state()
                    .into_iter()
                    .map(|(n, t)| Ok((n, t.copy()?)))
                    .collect::<Result<_>>()?,
            )),
            None => None,
        };
        Ok(())
    }

    fn on_batch_end(
        &mut self,
        model: &mut Sequential,
        epoch: usize,
        batch: usize,
        logs: &BatchLogs,
    ) -> Result<()> {
        let loss = logs.loss;
        let problem = if !loss.is_finite() {
            Some(format!("the loss became {loss}"))
        } else if let Some(why) = &logs.skipped {
            Some(why.clone())
        } else {
            model.params.first_non_finite()?.map(|(name, k)| {
                format!(
                    "{k} values of {name} became NaN or infinite (the loss was still {loss:.4})"
                )
            })
        };
        let Some(problem) = problem else {
            return Ok(());
        };
        model.params.restore(&self.weights)?;
        if let (Some(o), Some((iterations, state))) = (model.optimizer.as_mut(), &self.optimizer) {
            o.load_state(*iterations, state.iter().cloned().collect())?;
        }
        bail!(
            "{problem} in epoch {epoch} after {batch} batches: training stopped, and the weights and the optimizer's state are back to those of the end of epoch {}. Try a smaller learning rate, or check the inputs for NaN",
            epoch - 1
        )
    }
}
