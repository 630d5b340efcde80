"""`quicktune run` closes with where its wall time went: each phase gets the time between two
splits, and training's own seconds (from the trainer) are taken out of the interval they share."""

from quicktune.workflow import Phases


def test_phases_split_the_wall_time_and_training_is_taken_from_its_interval():
    ticks = iter([0.0, 500.0, 560.0, 650.0, 650.0])
    phases = Phases(clock=lambda: next(ticks))
    phases.split(("data check and loading", None), ("training", 423.0))  # at 500 s
    phases.split(("export and fidelity check", None))  # at 560 s
    phases.split(("eval", None))  # at 650 s
    assert phases.parts == [("data check and loading", 77.0), ("training", 423.0),
                            ("export and fidelity check", 60.0), ("eval", 90.0)]
    assert phases.line() == ("time: 10:50 in all — data check and loading 1:17, training 7:03, "
                             "export and fidelity check 1:00, eval 1:30")
