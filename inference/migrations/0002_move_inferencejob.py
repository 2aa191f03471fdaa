# Jobs moved to the conversations app (a job exists to produce a message).
# State only: the table stays where it is (conversations' model keeps its
# db_table), so no data moves.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('inference', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='InferenceJob')],
            database_operations=[],
        ),
    ]
