# nbgrader's configuration for the course in labs/ (this folder is the course directory).
# `make labs` runs `nbgrader generate_assignment` here: source/ (instructor versions, in
# git) -> release/ (student versions, generated, not in git). See labs/README.md.
import os

c = get_config()  # noqa: F821  (nbgrader provides it)
here = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.root = here
c.CourseDirectory.course_id = "labkit-xdp"
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
# The gradebook lives beside the course unless the instructor puts it elsewhere.
c.CourseDirectory.db_url = os.environ.get("LABKIT_GRADEBOOK", "sqlite:///" + os.path.join(here, "gradebook.db"))
# On the class hub (labs/jupyterhub_config.py) the instructor's server knows the class's exchange.
if os.environ.get("LABKIT_EXCHANGE"):
    c.Exchange.root = os.environ["LABKIT_EXCHANGE"]
# Solution regions in C cells (`// BEGIN SOLUTION`) first get the same Python stub as
# Python cells; the next step, labkit's CStubs, turns it into the C comment
# /* YOUR CODE HERE */ in %%bpf cells.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
from nbgrader.converters import GenerateAssignment  # noqa: E402

from labkit.teaching.release import with_c_stubs  # noqa: E402

c.GenerateAssignment.preprocessors = with_c_stubs(GenerateAssignment.class_traits()["preprocessors"].default())
c.ClearSolutions.begin_solution_delimeter = "BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "END SOLUTION"
c.ClearHiddenTests.begin_test_delimeter = "BEGIN HIDDEN TESTS"
c.ClearHiddenTests.end_test_delimeter = "END HIDDEN TESTS"
# Outputs never go to students (the instructor versions in git carry none anyway).
c.ClearOutput.enabled = True
