# nbgrader in a student's server on the class hub (labs/jupyterhub_config.py): submissions go
# to the class's exchange under the student's hub login (every server runs as root, so the
# operating system's user name would be "root" for all).
import os

c = get_config()  # noqa: F821  (nbgrader provides it)
c.CourseDirectory.course_id = "labkit-xdp"
c.Exchange.root = os.environ["LABKIT_EXCHANGE"]
c.CourseDirectory.student_id = os.environ["JUPYTERHUB_USER"]
